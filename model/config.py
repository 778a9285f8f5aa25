"""Configuration dataclasses for LLaVA-1.5 (CLIP vision tower + 2-layer projector + LLaMA decoder) and CLIP.

Two on-disk formats are read:
  * llava-hf `config.json` (model_type "llava"): `text_config` and `vision_config` are *sparse* overrides of
    transformers' LlamaConfig / CLIPVisionConfig defaults, so every omitted field is filled with those defaults
    here (e.g. CLIP's hidden_act "quick_gelu", LLaMA's rms_norm_eps 1e-6).
  * the original liuhaotian LLaVA-1.5 `config.json` (model_type "llava_llama"): a flat LLaMA config plus
    `mm_*` fields (`mm_vision_select_layer`, `mm_projector_type: mlp2x_gelu`, `mm_vision_select_feature: patch`,
    `image_aspect_ratio: pad`); its CLIP tower lives in a separate openai CLIP directory.

  * MobileVLM / MobileVLM V2 `config.json` (model_type "mobilevlm", Meituan-AutoML/MobileVLM): the same flat LLaMA +
    `mm_*` layout, with `mm_projector_type` ldpnetv2 (V2) or ldpnet (v1), `rms_norm_eps` 1e-6 (1.7B / 3B) and
    `vision_tower_type: clip`. The CLIP tower's fixed parts (patch, pixels) come from the `mm_vision_tower` name
    (openai/clip-vit-large-patch14-336 -> 14, 336); its widths and depth from the weights (model/checkpoint.py).
    Every field of the file is kept (`LlavaConfig.mobilevlm`) so an export writes them back (`to_mobilevlm_dict`).

Image tokens per image come from the projector (model/projector.py): 576 for LLaVA-1.5's MLP at 336 px, 144 for both
LDPs. A config that states a count (`image_seq_length`) must agree with it.

`LlavaConfig.to_dict()` writes the llava-hf format with full sub-configs (nothing left to defaults).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields

from .files import read_json


def _pick(cls, d: dict, **overrides):
    """Build dataclass `cls` from the keys of `d` it knows; unknown keys are config noise (e.g. torch_dtype)."""
    names = {f.name for f in fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    kw.update(overrides)
    return cls(**kw)


@dataclass
class VisionConfig:
    # defaults = transformers CLIPVisionConfig (ViT-B/32); llava-hf always overrides the size fields
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class CLIPTextConfig:
    # defaults = transformers CLIPTextConfig
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407  # pooling token; eos 2 = legacy rule "pool at argmax(input_ids)"
    projection_dim: int = 512


@dataclass
class TextConfig:
    # defaults = transformers LlamaConfig
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> MHA
    head_dim: int | None = None  # None -> hidden / heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.hidden_act != "silu":
            raise ValueError(f"text_config.hidden_act={self.hidden_act!r}: only LLaMA's silu is implemented")
        if self.tie_word_embeddings:
            raise ValueError("text_config.tie_word_embeddings=True: LLaVA-1.5 has an untied lm_head")


def _text_config(d: dict, source: str) -> TextConfig:
    """LLaMA fields; transformers 5 keeps rope_theta inside `rope_parameters`, v4 and liuhaotian at top level.
    Only plain RoPE is implemented, so any scaling is an error rather than a silently different model."""
    d = dict(d)
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"{source}: RoPE scaling {rope!r} is not supported (plain rope_theta only)")
    if "rope_theta" in rope:
        d["rope_theta"] = rope["rope_theta"]
    return _pick(TextConfig, d)


# the projectors (model/projector.py) and the image tokens each emits; here, so a config needs no torch
PROJECTOR_TYPES = ("mlp2x_gelu", "ldpnetv2", "ldpnet")
LDP_V2_GRID = 12  # TokenDownLayer((12, 12)) in the official code: a fixed output grid, whatever the input grid


def grid_side(num_patches: int) -> int:
    g = math.isqrt(num_patches)
    if g * g != num_patches:
        raise ValueError(f"an LDP projector needs a square patch grid, got {num_patches} patches")
    return g


def num_image_tokens(projector_type: str, num_patches: int) -> int:
    """Image tokens per image the projector emits from `num_patches` CLIP patches (CLS already dropped)."""
    if projector_type == "mlp2x_gelu":
        return num_patches
    if projector_type == "ldpnetv2":
        return LDP_V2_GRID ** 2
    if projector_type == "ldpnet":
        return ((grid_side(num_patches) - 1) // 2 + 1) ** 2  # a 3x3 conv, stride 2, padding 1
    raise ValueError(f"unknown projector type {projector_type!r}; known: {', '.join(PROJECTOR_TYPES)}")


MOBILEVLM_PROJECTORS = ("ldpnetv2", "ldpnet")


def tower_patch_and_size(name: str, source: str = "config.json") -> tuple[int, int]:
    """The fixed parts of an openai CLIP tower from its hub name: "...-patch14-336" -> (14, 336); no size = 224."""
    m = re.search(r"patch(\d+)(?:-(\d+))?$", name.rstrip("/"))
    if not m:
        raise ValueError(f"{source}: mm_vision_tower={name!r}: expected an openai CLIP name ending in "
                         "patchP[-SIZE], e.g. openai/clip-vit-large-patch14-336")
    return int(m.group(1)), int(m.group(2) or 224)


@dataclass
class LlavaConfig:
    vision: VisionConfig = field(default_factory=lambda: VisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768))
    text: TextConfig = field(default_factory=TextConfig)
    image_token_id: int = 32000
    pad_token_id: int | None = None
    projector_hidden_act: str = "gelu"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"  # "default" drops CLS, "full" keeps it
    multimodal_projector_bias: bool = True
    image_aspect_ratio: str = "pad"  # preprocessing hint: "pad" = LLaVA-1.5 expand-to-square
    projector_type: str = "mlp2x_gelu"  # or MobileVLM's ldpnetv2 / ldpnet (model/projector.py)
    mobilevlm: dict | None = None  # a MobileVLM config.json's own fields, written back on export; None = LLaVA

    def __post_init__(self):
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy={self.vision_feature_select_strategy!r}")
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type={self.projector_type!r}; known: {', '.join(PROJECTOR_TYPES)}")
        if self.projector_type != "mlp2x_gelu" and self.vision_feature_select_strategy != "default":
            raise ValueError(f"{self.projector_type} pools a square patch grid: the CLS token must be dropped")
        if self.projector_hidden_act != "gelu":
            raise ValueError(f"projector_hidden_act={self.projector_hidden_act!r}: LLaVA-1.5 uses exact gelu")
        n = self.vision.num_hidden_layers
        if not -n <= self.vision_feature_layer <= n:
            raise ValueError(f"vision_feature_layer={self.vision_feature_layer} outside [-{n}, {n}]")

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def num_image_tokens(self) -> int:
        if self.projector_type == "mlp2x_gelu":
            return self.vision.num_patches + (1 if self.vision_feature_select_strategy == "full" else 0)
        return num_image_tokens(self.projector_type, self.vision.num_patches)

    @property
    def is_mobilevlm(self) -> bool:
        return self.mobilevlm is not None

    def check_image_tokens(self, declared, source: str, key: str = "image_seq_length"):
        """A count the config file states must be what the projector emits (a file edited by hand, or made for
        another projector, would otherwise misplace every image)."""
        if declared is not None and declared != self.num_image_tokens:
            raise ValueError(f"{source}: {key}={declared}, but the {self.projector_type} projector on "
                             f"{self.vision.num_patches} patches gives {self.num_image_tokens} image tokens per image")

    @property
    def vision_layers_used(self) -> int:
        """hidden_states[i] is the output of block i (0 = embeddings), so layer -2 needs n-1 blocks."""
        n = self.vision.num_hidden_layers
        return self.vision_feature_layer % (n + 1)

    # ---------------------------------------------------------------- reading
    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "LlavaConfig":
        if "text_config" in d or d.get("model_type") == "llava":
            tc = dict(d.get("text_config") or {})
            vc = dict(d.get("vision_config") or {})
            if not vc:  # llava-hf leaves the whole vision config to LlavaConfig's defaults
                vc = asdict(cls().vision)
            layer = d.get("vision_feature_layer", -2)
            if not isinstance(layer, int):
                raise ValueError(f"{source}: vision_feature_layer={layer!r}: only a single layer is supported")
            return cls(
                vision=_pick(VisionConfig, vc), text=_text_config(tc, source),
                image_token_id=d.get("image_token_index", d.get("image_token_id", 32000)),
                pad_token_id=d.get("pad_token_id", tc.get("pad_token_id")),
                projector_hidden_act=d.get("projector_hidden_act", "gelu"),
                vision_feature_layer=layer,
                vision_feature_select_strategy=d.get("vision_feature_select_strategy", "default"),
                multimodal_projector_bias=d.get("multimodal_projector_bias", True),
                # llava-hf's config.json does not say; LLaVA-1.5 trained and is benchmarked padded to square
                image_aspect_ratio=d.get("image_aspect_ratio", "pad"),
            )
        if d.get("model_type") == "mobilevlm" or d.get("mm_projector_type") in MOBILEVLM_PROJECTORS:
            return cls._from_mobilevlm(d, source)
        if "mm_projector_type" in d or "mm_vision_tower" in d:
            if d.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
                raise ValueError(f"{source}: mm_projector_type={d['mm_projector_type']!r} is not a known projector: "
                                 "mlp2x_gelu (LLaVA-1.5), ldpnetv2 (MobileVLM V2), ldpnet (MobileVLM v1)")
            feat = d.get("mm_vision_select_feature", "patch")
            if feat not in ("patch", "cls_patch"):
                raise ValueError(f"{source}: mm_vision_select_feature={feat!r}")
            # the vision sub-config comes from the separate CLIP directory (see Llava.from_pretrained)
            return cls(
                vision=VisionConfig(hidden_size=d.get("mm_hidden_size", 1024), intermediate_size=4096,
                                    num_hidden_layers=24, num_attention_heads=16, image_size=336,
                                    patch_size=14, projection_dim=768),
                text=_text_config(d, source),
                # the original model only knows 32000 tokens and splices images at a -200 sentinel; we keep the
                # llava-hf convention (a real token id per image position) and use vocab_size as that id.
                image_token_id=d.get("image_token_index", d["vocab_size"] if "vocab_size" in d else 32000),
                pad_token_id=d.get("pad_token_id"),
                vision_feature_layer=d.get("mm_vision_select_layer", -2),
                vision_feature_select_strategy="default" if feat == "patch" else "full",
                image_aspect_ratio=d.get("image_aspect_ratio", "pad"),
            )
        raise ValueError(f"{source}: neither a llava-hf config (text_config) nor a liuhaotian one (mm_*)")

    @classmethod
    def _from_mobilevlm(cls, d: dict, source: str) -> "LlavaConfig":
        """MobileVLM's config.json. The official code builds transformers' LlamaConfig from it, so only the HF field
        names count: MobileVLM_V2-3B's file also carries stale lit-gpt keys (`n_head: 16`, `n_query_groups`,
        `n_embd`, `norm_eps`, `block_size`, `name`) next to `num_attention_heads: 32`, and LlamaConfig never reads
        them; neither does _text_config (its dataclass picks HF names only). The published numbers are 32 heads."""
        ptype = d.get("mm_projector_type")
        if ptype not in MOBILEVLM_PROJECTORS:
            raise ValueError(f"{source}: mm_projector_type={ptype!r}: a MobileVLM projector is one of "
                             f"{', '.join(MOBILEVLM_PROJECTORS)}")
        for key in ("mm_use_im_start_end", "mm_use_im_patch_token"):
            if d.get(key):  # the published configs say false; true adds tokens and embedding rows not handled here
                raise ValueError(f"{source}: {key}=true is not supported (MobileVLM's published configs: false)")
        if d.get("vision_tower_type", "clip") != "clip":
            raise ValueError(f"{source}: vision_tower_type={d['vision_tower_type']!r}: only clip (the official "
                             "loader knows no other)")
        feat = d.get("mm_vision_select_feature", "patch")
        if feat != "patch":
            raise ValueError(f"{source}: mm_vision_select_feature={feat!r}: an LDP projector needs 'patch' (CLS "
                             "dropped, a square grid)")
        name = d.get("mm_vision_tower")
        if not isinstance(name, str):
            raise ValueError(f"{source}: mm_vision_tower is missing (e.g. openai/clip-vit-large-patch14-336)")
        patch, size = tower_patch_and_size(name, source)
        c = cls(
            # widths and depth are placeholders until the weights (v2) or the --vision_tower dir (v1) say
            vision=VisionConfig(hidden_size=d.get("mm_hidden_size", 1024), intermediate_size=4096,
                                num_hidden_layers=24, num_attention_heads=16, image_size=size, patch_size=patch,
                                projection_dim=768),
            text=_text_config(d, source),
            image_token_id=d.get("image_token_index", d.get("vocab_size", 32000)),  # -200's stand-in, as liuhaotian
            pad_token_id=d.get("pad_token_id"),
            vision_feature_layer=d.get("mm_vision_select_layer", -2),
            image_aspect_ratio=d.get("image_aspect_ratio", "pad"),
            projector_type=ptype, mobilevlm=dict(d))
        c.check_image_tokens(d.get("image_seq_length"), source)
        return c

    def to_mobilevlm_dict(self) -> dict:
        """config.json in MobileVLM's layout: the base file's fields (every mm_* among them) with the LLaMA and
        projector fields of this model written over them; what the official MobileLlamaForCausalLM and llama.cpp's
        MobileVLM conversion read."""
        t = self.text
        d = dict(self.mobilevlm or {})
        d.update(architectures=["MobileLlamaForCausalLM"], model_type="mobilevlm", vocab_size=t.vocab_size,
                 hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                 num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                 num_key_value_heads=t.num_key_value_heads, hidden_act=t.hidden_act,
                 max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
                 rope_theta=t.rope_theta, rope_scaling=None, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
                 pad_token_id=self.pad_token_id, tie_word_embeddings=False, mm_projector_type=self.projector_type,
                 mm_hidden_size=self.vision.hidden_size, mm_vision_select_layer=self.vision_feature_layer,
                 mm_vision_select_feature="patch", image_aspect_ratio=self.image_aspect_ratio,
                 mm_use_im_start_end=False, mm_use_im_patch_token=False, vision_tower_type="clip",
                 image_seq_length=self.num_image_tokens)
        d.setdefault("mm_vision_tower", "openai/clip-vit-large-patch14-336")
        d.pop("rope_parameters", None)  # transformers 5's spelling; the official code (4.33) reads rope_theta
        return d

    @classmethod
    def from_dir(cls, path: str) -> "LlavaConfig":
        f = os.path.join(path, "config.json")
        if not os.path.isfile(f):
            raise FileNotFoundError(f"no config.json in {path!r}")
        d = read_json(f)
        return cls.from_dict(d, source=f)

    # ---------------------------------------------------------------- writing (llava-hf layout)
    def to_dict(self) -> dict:
        text = asdict(self.text)
        text.update(model_type="llama", architectures=["LlamaForCausalLM"])
        vision = asdict(self.vision)
        vision.update(model_type="clip_vision_model")
        return {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "image_token_index": self.image_token_id,
            "pad_token_id": self.pad_token_id,
            "projector_hidden_act": self.projector_hidden_act,
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "multimodal_projector_bias": self.multimodal_projector_bias,
            "image_seq_length": self.num_image_tokens,
            "image_aspect_ratio": self.image_aspect_ratio,
            "tie_word_embeddings": False,
            "text_config": text,
            "vision_config": vision,
        }


@dataclass
class CLIPConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_dir(cls, path: str) -> "CLIPConfig":
        f = os.path.join(path, "config.json")
        if not os.path.isfile(f):
            raise FileNotFoundError(f"no config.json in {path!r}")
        d = read_json(f)
        if d.get("model_type") == "clip_vision_model":  # a standalone CLIPVisionModel directory
            return cls(vision=_pick(VisionConfig, d), projection_dim=d.get("projection_dim", 512))
        proj = d.get("projection_dim", 512)
        return cls(vision=_pick(VisionConfig, d.get("vision_config") or {}, projection_dim=proj),
                   text=_pick(CLIPTextConfig, d.get("text_config") or {}, projection_dim=proj),
                   projection_dim=proj, logit_scale_init_value=d.get("logit_scale_init_value", 2.6592))

    def to_dict(self) -> dict:
        return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": self.projection_dim,
                "logit_scale_init_value": self.logit_scale_init_value,
                "text_config": dict(asdict(self.text), model_type="clip_text_model"),
                "vision_config": dict(asdict(self.vision), model_type="clip_vision_model")}
