"""model/image.py against transformers' CLIPImageProcessor (PIL backend) and LLaVA's expand2square, plus errors.

The padded reference canvas is built here with numpy (offset floor((max - min) / 2), colour (122, 116, 104)),
independently of model.image.expand2square, and then fed to transformers' processor.
"""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.image import (PAD_COLOR, expand2square, load_image, pil_from_tensor01, pil_to_tensor01)

SIZE = 32
TOL = 1e-5


@pytest.fixture(scope="module")
def processor():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    # llava-1.5's preprocessor_config.json with 336 -> SIZE
    return CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                                 resample=3, do_resize=True, do_center_crop=True, do_rescale=True,
                                 rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
                                 image_mean=[0.48145466, 0.4578275, 0.40821073],
                                 image_std=[0.26862954, 0.26130258, 0.27577711])


def ref(processor, img):
    return processor(images=img, return_tensors="pt")["pixel_values"][0]  # (3, S, S)


def rand_image(w, h, mode="RGB", seed=0):
    rng = np.random.RandomState(seed)
    chans = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.randint(0, 256, (h, w, chans), dtype=np.uint8)
    # smooth structure + noise so resampling differences would show
    arr = (arr // 2 + (np.arange(w)[None, :, None] * 3 + np.arange(h)[:, None, None] * 5) % 128).astype(np.uint8)
    if mode == "RGBA":
        arr[..., 3] = rng.choice([0, 90, 255], size=(h, w))  # transparent, partial and opaque pixels
    return Image.fromarray(arr[..., 0] if mode == "L" else arr, mode=mode)


def padded_reference_canvas(rgb: Image.Image) -> Image.Image:
    arr = np.asarray(rgb)
    h, w, _ = arr.shape
    side = max(w, h)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = np.array([122, 116, 104], dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top:top + h, left:left + w] = arr
    return Image.fromarray(canvas)


# wide and tall, odd and even differences, smaller than SIZE (upsampling), square, much larger
SHAPES = [(51, 37), (30, 47), (64, 33), (33, 64), (20, 13), (32, 32), (45, 45), (200, 75)]


@pytest.mark.parametrize("w,h", SHAPES)
def test_no_pad_matches_clip_image_processor(processor, w, h):
    img = rand_image(w, h, seed=w * 1000 + h)
    x = load_image(img, SIZE, pad=False)
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    assert (x - ref(processor, img)).abs().max().item() < TOL


@pytest.mark.parametrize("w,h", SHAPES)
def test_pad_matches_expand2square_then_processor(processor, w, h):
    img = rand_image(w, h, seed=w * 1000 + h)
    x = load_image(img, SIZE, pad=True)
    assert x.shape == (3, SIZE, SIZE)
    assert (x - ref(processor, padded_reference_canvas(img))).abs().max().item() < TOL
    if w != h:  # padding really changes the result for non-square images
        assert (x - load_image(img, SIZE, pad=False)).abs().max().item() > 0.1


def test_llava_size_coco_shape_bit_exact():
    """336 px (LLaVA-1.5's CLIP) on a COCO-shaped 640x427 image: identical to transformers, both modes."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    p336 = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3)
    img = rand_image(640, 427, seed=1)
    assert torch.equal(load_image(img, 336, pad=False), ref(p336, img))
    assert torch.equal(load_image(img, 336, pad=True), ref(p336, padded_reference_canvas(img)))


def test_expand2square_offsets_and_colour():
    img = Image.new("RGB", (2, 5), (255, 0, 0))  # W=2, H=5 -> pad 3 columns: 1 left, 2 right
    sq = expand2square(img, PAD_COLOR)
    arr = np.asarray(sq)
    assert sq.size == (5, 5) and PAD_COLOR == (122, 116, 104)
    assert (arr[:, 1:3] == [255, 0, 0]).all()
    assert (arr[:, 0] == PAD_COLOR).all() and (arr[:, 3:] == PAD_COLOR).all()
    wide = np.asarray(expand2square(Image.new("RGB", (6, 3), (0, 0, 255)), PAD_COLOR))  # 3 rows: 1 above, 2 below
    assert (wide[1:4] == [0, 0, 255]).all() and (wide[0] == PAD_COLOR).all() and (wide[4:] == PAD_COLOR).all()
    square = Image.new("RGB", (4, 4))
    assert expand2square(square, PAD_COLOR) is square


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba(processor, mode):
    img = rand_image(41, 28, mode=mode, seed=7)
    # pad=False follows transformers: grey replicated, alpha composited over white
    assert (load_image(img, SIZE, pad=False) - ref(processor, img)).abs().max().item() < TOL
    # pad=True follows the original LLaVA: Image.convert("RGB") (alpha dropped), then expand2square
    want = ref(processor, padded_reference_canvas(img.convert("RGB")))
    assert (load_image(img, SIZE, pad=True) - want).abs().max().item() < TOL
    if mode == "RGBA":  # the two alpha conventions differ on this image, so both branches were exercised
        assert (load_image(img, SIZE, pad=False) - load_image(img.convert("RGB"), SIZE, pad=False)).abs().max() > 0.1


def test_palette_with_transparency_matches_processor(processor):
    img = rand_image(30, 22, seed=3).convert("P")
    img.info["transparency"] = 0  # palette index 0 transparent
    assert (load_image(img, SIZE, pad=False) - ref(processor, img)).abs().max().item() < TOL


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_path_equals_pil(tmp_path, fmt):
    img = rand_image(40, 29, seed=11)
    path = tmp_path / f"img.{fmt.lower()}"
    img.save(path, format=fmt)
    with Image.open(path) as f:
        decoded = f.convert("RGB")  # JPEG is lossy: compare with the decoded file, not the source array
    for pad in (True, False):
        assert torch.equal(load_image(path, SIZE, pad=pad), load_image(decoded, SIZE, pad=pad))
        assert torch.equal(load_image(str(path), SIZE, pad=pad), load_image(decoded, SIZE, pad=pad))


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope" / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(path, SIZE)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_names_path(tmp_path, fmt):
    buf = io.BytesIO()
    rand_image(64, 48, seed=5).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"truncated.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"truncated.{fmt.lower()}"):
        load_image(path, SIZE)


def test_not_an_image_names_path(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ValueError, match="notes.png"):
        load_image(path, SIZE)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.jpg"):
        load_image(empty, SIZE)
    with pytest.raises(TypeError, match="path or a PIL.Image"):
        load_image(np.zeros((4, 4, 3)), SIZE)
    with pytest.raises(ValueError, match="size"):
        load_image(rand_image(8, 8), 0)


def test_tensor01_round_trip_and_clamp():
    img = rand_image(9, 6, seed=2)
    x = pil_to_tensor01(img)
    assert x.shape == (3, 6, 9) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert np.array_equal(np.asarray(pil_from_tensor01(x)), np.asarray(img))
    assert torch.allclose(x[:, 2, 3], torch.tensor(np.asarray(img)[2, 3], dtype=torch.float32) / 255)
    y = torch.tensor([[[-0.5, 0.5, 1.7]]]).expand(3, 1, 3)  # out-of-range values are clamped, not wrapped
    assert np.asarray(pil_from_tensor01(y))[0, :, 0].tolist() == [0, 128, 255]
    assert np.asarray(pil_from_tensor01(y, round=False))[0, :, 0].tolist() == [0, 127, 255]  # truncation
    with pytest.raises(ValueError, match="3, H, W"):
        pil_from_tensor01(torch.zeros(1, 4, 4))
