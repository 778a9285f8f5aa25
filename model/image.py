"""Image preprocessing for LLaVA-1.5 and CLIP: file -> RGB -> (pad to square) -> resize -> crop -> normalise.

Two references, one switch:
  load_image(x, size, pad=True)   the original LLaVA-1.5 (`image_aspect_ratio = pad`, mm_utils.expand2square):
                                  Image.open(...).convert("RGB"), paste centred on a square canvas filled with the
                                  CLIP mean colour (122, 116, 104), then CLIPImageProcessor.
  load_image(x, size, pad=False)  llava-hf's processor: a plain CLIPImageProcessor (resize the shortest edge, then
                                  centre-crop, so the borders of a non-square image are cut off).

CLIPImageProcessor, step by step, as transformers' PIL backend does it (image_transforms.get_resize_output_image_size,
resize, center_crop, rescale, normalize):
  short, long = sorted(W, H);  new_short = size;  new_long = int(size * long / short)   (truncation, not rounding)
  PIL resize with BICUBIC (resample=3), reducing_gap None
  centre crop: top = (H - size) // 2, left = (W - size) // 2
  x = float32(float64(uint8) * (1/255));  x = (x - mean) / std   in float32
The parity test (tests/test_image.py) checks the result against transformers' CLIPImageProcessor within 1e-5.

Alpha: an image with an alpha channel (or palette transparency) is composited over white by current transformers
(pad=False follows that); the original LLaVA calls .convert("RGB"), which drops alpha (pad=True follows that).

Also here: expand2square, pil_to_tensor01 / pil_from_tensor01 ([0,1] float CHW <-> PIL, for noise.py's DDPM
forward process, which works on the raw [0,1] image before preprocessing, as POVID does).

Run the tests: .venv/bin/python -m pytest -q tests/test_image.py
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# LLaVA's padding colour: tuple(int(x * 255) for x in image_mean), truncated to int, not rounded
PAD_COLOR = tuple(int(m * 255) for m in CLIP_MEAN)  # (122, 116, 104)


def open_image(path_or_pil) -> Image.Image:
    """Open and fully decode an image. A PIL image is returned as is.

    Decoding happens here (img.load()), not lazily later, so a truncated or corrupt file fails with its path named.
    """
    if isinstance(path_or_pil, Image.Image):
        return path_or_pil
    if not isinstance(path_or_pil, (str, os.PathLike)):
        raise TypeError(f"load_image expects a path or a PIL.Image, got {type(path_or_pil).__name__}")
    path = os.fspath(path_or_pil)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # decode now, while the file is open; raises on truncated data
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file (PIL cannot identify it)") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports truncated/corrupt data with these
        raise ValueError(f"{path}: unreadable or truncated image ({e})") from None
    return img


def to_rgb(img: Image.Image, composite_alpha: bool) -> Image.Image:
    """RGB copy of `img`. composite_alpha=True: blend over white (transformers); False: drop alpha (original LLaVA)."""
    has_alpha = "A" in img.getbands() or img.info.get("transparency") is not None
    if composite_alpha and has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def expand2square(img: Image.Image, fill=PAD_COLOR) -> Image.Image:
    """Pad to a square of side max(W, H) with `fill`, the image centred at offset floor((max - min) / 2).

    A square image is returned unchanged (LLaVA's mm_utils.expand2square).
    """
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))  # one of the two offsets is 0
    return canvas


def resize_shortest_edge(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size`, keeping the aspect ratio (the long side truncated to int)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # int(): transformers truncates, it does not round
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img  # PIL would return an identical copy anyway; skip the work
    return img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Centre crop to size x size: top = (H - size) // 2, left = (W - size) // 2 (the image must be large enough)."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"center_crop: image {w}x{h} is smaller than the crop {size}x{size}")
    top, left = (h - size) // 2, (w - size) // 2
    return img.crop((left, top, left + size, top + size))


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] -> CLIP-normalised, computed in float32 like transformers."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return (x01 - mean) / std


def pil_to_tensor01(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [0, 1] (uint8 / 255, computed in float64 then cast, as transformers)."""
    arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)  # (H, W, 3)
    x = torch.from_numpy(arr.astype(np.float64) * (1 / 255)).to(torch.float32)
    return x.permute(2, 0, 1).contiguous()  # (3, H, W)


def pil_from_tensor01(x01: torch.Tensor, round: bool = True) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB PIL image. Values are clamped to [0, 1] first.

    round=True rounds to the nearest uint8 (pil_to_tensor01 -> pil_from_tensor01 is then exact); round=False
    truncates like torchvision's ToPILImage (x.mul(255).byte()). POVID's original code did not clamp before
    ToPILImage, so out-of-range noise wrapped around modulo 256; clamping is a deliberate choice here.
    """
    if x01.dim() != 3 or x01.shape[0] != 3:
        raise ValueError(f"pil_from_tensor01 expects a (3, H, W) tensor, got shape {tuple(x01.shape)}")
    x = x01.detach().to("cpu", torch.float32).clamp(0.0, 1.0) * 255.0
    x = x.round() if round else x.floor()
    arr = x.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()  # (H, W, 3)
    return Image.fromarray(arr, mode="RGB")


def load_image(path_or_pil, size: int, pad: bool = True) -> torch.Tensor:
    """Path or PIL image -> (3, size, size) float32 pixel_values, CLIP-normalised.

    pad=True: original LLaVA-1.5 (drop alpha, expand2square with the CLIP mean colour, resize, crop);
    pad=False: llava-hf's CLIPImageProcessor (alpha over white, resize shortest edge, centre crop).
    """
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"load_image: size must be a positive int, got {size!r}")
    img = open_image(path_or_pil)
    if pad:
        img = expand2square(to_rgb(img, composite_alpha=False), PAD_COLOR)
    else:
        img = to_rgb(img, composite_alpha=True)
    img = center_crop(resize_shortest_edge(img, size), size)
    return normalize(pil_to_tensor01(img))  # (3, S, S)
