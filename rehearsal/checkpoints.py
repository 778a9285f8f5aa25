"""Random checkpoints with the real jobs' shapes, cut in depth, for rehearsing the real pipeline on CPU:

  llava   llava-hf/llava-1.5-7b-hf: its config.json exactly (below), except num_hidden_layers = 2 in both
          sub-configs (text_config gains the key); widths, heads, 336 px, patch 14, 576 image tokens, vocab 32064,
          feature layer -2 unchanged. fp16 safetensors shards + model.safetensors.index.json with the hub's legacy key
          prefixes; the side files as llava-hf ships them (CLIPImageProcessor without padding, chat_template.json,
          processor_config.json, generation_config.json) and the real LLaMA tokenizer of rehearsal/assets.py.
  clip    openai/clip-vit-large-patch14-336 (CLIPModel): vision 1024 wide / 16 heads / 336 px / patch 14, text 768 /
          12 heads / 77 positions / vocab 49408, projection 768, logit_scale ln 100 (the trained value); 2 layers per
          tower instead of 24 / 12. fp32 model.safetensors, the real CLIP tokenizer files, preprocessor_config.json.
  narrow  the same files with narrow widths (text 256 / 688 / 4 heads, vision 128 / 512 / 2 heads, CLIP text 128):
          still 336 px, 576 image tokens, the real vocabularies and tokenizers. The CI-speed version of the same path.

  mobilevlm  mtgv/MobileVLM_V2-1.7B at full size: its config.json verbatim (24 layers, 1.7 B parameters), one bf16
          pytorch_model.bin under the published key names with the 24-layer CLIP tower inside, LLaMA's tokenizer.model
          (SentencePiece, rebuilt from the same vocabulary and merges) and no tokenizer.json.

    python -m rehearsal.checkpoints --out out/rehearsal [--narrow] [--layers 2] [--check]
    -> out/rehearsal/llava-1.5-7b-hf[-narrow]/, out/rehearsal/clip-vit-large-patch14-336[-narrow]/
    python -m rehearsal.checkpoints --out out/rehearsal --mobilevlm --layers 24 --check
    -> out/rehearsal/MobileVLM_V2-1.7B/

    from rehearsal.checkpoints import build_llava, build_clip
    d = build_llava("out/rehearsal", narrow=True)   # cached: an existing build with the same stamp is reused

Weights: N(0, 1/fan_in) for every matrix (so each layer keeps the activation scale), token embeddings N(0, 1),
biases and norm offsets N(0, 0.02) around 0 / 1. Random, so no output means anything; the point is that every
shape, key, dtype, file and id the real run touches is the real one. The openai CLIP config is written with the
fields that matter (sizes, quick_gelu, eps, the legacy text ids bos 0 / eos 2 / pad 1 that make transformers pool at
the argmax id) rather than every generic field of the 4.21-era file.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import resource
import shutil
import struct
import time

import torch

from model import CLIPModel, Llava
from model.checkpoint import clip_keys, llava_hf_keys, save_state
from model.config import CLIPConfig, LlavaConfig
from model.files import write_json
from model.hf_files import LLAVA_HF_CHAT_TEMPLATE, preprocessor_config, processor_config
from model.image import CLIP_MEAN, CLIP_STD
from rehearsal import assets

# llava-hf/llava-1.5-7b-hf config.json, as on the hub
LLAVA_HF_7B_CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064}
LLAVA_HF_GENERATION = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001,
                       "transformers_version": "4.36.0.dev0"}

# openai/clip-vit-large-patch14-336 config.json: the fields that define the model
CLIP_L336_CONFIG = {
    "_name_or_path": "openai/clip-vit-large-patch14-336", "architectures": ["CLIPModel"], "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592, "model_type": "clip", "projection_dim": 768, "torch_dtype": "float32",
    "text_config": {"attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
                    "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
                    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
                    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
                    "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "vocab_size": 49408},
    "vision_config": {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 1024,
                      "image_size": 336, "initializer_factor": 1.0, "initializer_range": 0.02,
                      "intermediate_size": 4096, "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
                      "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 24, "patch_size": 14,
                      "projection_dim": 768}}
CLIP_PREPROCESSOR = {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                     "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN),
                     "image_std": list(CLIP_STD), "resample": 3, "size": 336}

# mtgv/MobileVLM_V2-1.7B config.json, as on the hub (commit 302257f)
MOBILEVLM_V2_1P7B_CONFIG = {
    "_name_or_path": "mtgv/MobileVLM_V2-1.7B", "architectures": ["MobileLlamaForCausalLM"], "bos_token_id": 1,
    "eos_token_id": 2, "freeze_mm_mlp_adapter": False, "hidden_act": "silu", "hidden_size": 2048,
    "image_aspect_ratio": "pad", "image_grid_pinpoints": None, "initializer_range": 0.02, "intermediate_size": 5632,
    "max_position_embeddings": 2048, "max_sequence_length": 2048, "mm_hidden_size": 1024, "mm_projector_lr": None,
    "mm_projector_type": "ldpnetv2", "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
    "mm_vision_tower": "openai/clip-vit-large-patch14-336", "model_type": "mobilevlm", "num_attention_heads": 16,
    "num_hidden_layers": 24, "num_key_value_heads": 16, "pad_token_id": 0, "pretraining_tp": 1, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1", "tune_mm_mlp_adapter": False, "use_cache": True, "use_mm_proj": True,
    "vision_tower_type": "clip", "vocab_size": 32000}
# openai/clip-vit-large-patch14-336's vision tower, which MobileVLM V2 holds inside its file (not named by its config)
CLIP_L336_TOWER = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "image_size": 336, "patch_size": 14}
# MobileLLaMA's tokenizer side files (mtgv/MobileLLaMA-2.7B-Chat's special_tokens_map.json: pad = <unk>)
MOBILEVLM_TOKENIZER_CONFIG = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                              "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": False,
                              "model_max_length": 2048, "pad_token": "<unk>", "padding_side": "right",
                              "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>"}
MOBILEVLM_GENERATION = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "4.33.1"}

NARROW_TEXT = {"hidden_size": 256, "intermediate_size": 688, "num_attention_heads": 4}
NARROW_VISION = {"hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 2}
BUILD_VERSION = 1


def llava_config(layers: int = 2, narrow: bool = False) -> dict:
    cfg = copy.deepcopy(LLAVA_HF_7B_CONFIG)
    cfg["text_config"]["num_hidden_layers"] = layers
    cfg["vision_config"]["num_hidden_layers"] = layers
    if narrow:
        cfg["text_config"].update(NARROW_TEXT)
        cfg["vision_config"].update(NARROW_VISION)
    return cfg


def clip_config(layers: int = 2, narrow: bool = False) -> dict:
    cfg = copy.deepcopy(CLIP_L336_CONFIG)
    cfg["text_config"]["num_hidden_layers"] = cfg["vision_config"]["num_hidden_layers"] = layers
    if narrow:
        cfg["vision_config"].update(NARROW_VISION, projection_dim=64)
        cfg["text_config"].update(hidden_size=128, intermediate_size=512, num_attention_heads=2, projection_dim=64)
        cfg["projection_dim"] = 64
    return cfg


def random_state(model: torch.nn.Module, dtype, seed: int) -> dict:
    """One tensor per state-dict key of `model` (built on meta: shapes only), drawn in fp32, stored in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        shape = t.shape  # torch.Size
        if name.endswith("norm.weight") or "layer_norm" in name and name.endswith("weight") or \
                "layrnorm.weight" in name:
            x = 1 + 0.02 * torch.randn(shape, generator=g)
        elif name.endswith("bias") or name.endswith("class_embedding"):
            x = 0.02 * torch.randn(shape, generator=g)
        elif name.endswith("logit_scale"):
            x = torch.tensor(4.6052)  # ln 100: openai's trained temperature
        elif "embed" in name and t.dim() == 2:  # token and position tables
            x = torch.randn(shape, generator=g) * (1.0 if "token" in name or "embed_tokens" in name else 0.1)
        else:  # linear (out, in) and the patch conv (out, c, p, p): unit gain per layer
            x = torch.randn(shape, generator=g) * (shape[1:].numel() ** -0.5)
        out[name] = x.to(dtype)
    return out


def _finish(tmp: str, final: str, stamp: str) -> str:
    with open(os.path.join(tmp, ".built"), "w") as f:
        f.write(stamp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def _cached(final: str, stamp: str) -> bool:
    f = os.path.join(final, ".built")
    return os.path.isfile(f) and open(f).read() == stamp


def _copy_files(src: str, dst: str, names):
    for n in names:
        shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))


def build_llava(out: str, narrow: bool = False, layers: int = 2, seed: int = 0, assets_dir: str = assets.DEFAULT_OUT,
                shards: int = 3) -> str:
    """OUT/llava-1.5-7b-hf[-narrow]: the llava-hf checkpoint described in the module docstring; returns its path."""
    final = os.path.join(os.path.abspath(out), "llava-1.5-7b-hf" + ("-narrow" if narrow else ""))
    stamp = f"llava narrow={narrow} layers={layers} seed={seed} build={BUILD_VERSION}\n"
    if _cached(final, stamp):
        return final
    tok_dir = assets.llama_tokenizer_dir(assets_dir)
    cfg_dict = llava_config(layers, narrow)
    config = LlavaConfig.from_dict(cfg_dict)
    with torch.device("meta"):
        shapes = Llava(config)
    state = llava_hf_keys(random_state(shapes, torch.float16, seed))
    total = sum(t.numel() * t.element_size() for t in state.values())
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_state(state, tmp, max_shard_bytes=-(-total // shards), config=cfg_dict)  # the hub has 3 shards
    _copy_files(tok_dir, tmp, ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                               "added_tokens.json"))
    hub = dataclasses.replace(config, image_aspect_ratio="square")  # the hub's file centre-crops, pads nothing
    write_json(os.path.join(tmp, "preprocessor_config.json"), preprocessor_config(hub))
    write_json(os.path.join(tmp, "processor_config.json"), processor_config(config))
    write_json(os.path.join(tmp, "chat_template.json"), {"chat_template": LLAVA_HF_CHAT_TEMPLATE})
    write_json(os.path.join(tmp, "generation_config.json"), LLAVA_HF_GENERATION)
    return _finish(tmp, final, stamp)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value) -> bytes:
    """One protobuf field: int -> varint, float -> fixed32, bytes / str -> length-delimited."""
    if isinstance(value, float):
        return _varint(num << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def llama_sentencepiece_model(pieces, merges) -> bytes:
    """LLaMA's tokenizer.model (a SentencePiece BPE ModelProto) rebuilt from the vocabulary and the ranked merges of
    rehearsal/assets.py: <unk> UNKNOWN, <s> </s> CONTROL, <0x00>..<0xFF> BYTE, the rest NORMAL with score -(rank of
    the first merge that builds the piece), single characters below every merge; trainer spec BPE + byte fallback,
    normalizer identity with the dummy prefix and spaces kept, as LLaMA's. `check` compares its ids with the
    tokenizer.json built from the same data."""
    score = {}
    for rank, (a, b) in enumerate(merges):
        score.setdefault(a + b, -float(rank))
    body = b""
    for i, p in enumerate(pieces):
        kind = 2 if i == 0 else 3 if i in (1, 2) else 6 if 3 <= i < 259 else 1
        sc = 0.0 if kind != 1 else score.get(p, -float(len(merges) + i))
        body += _field(1, _field(1, p) + _field(2, sc) + _field(3, kind))
    trainer = _field(3, 2) + _field(4, len(pieces)) + _field(25, 1) + _field(35, 1) + _field(40, 0) + \
        _field(41, 1) + _field(42, 2)
    normalizer = _field(1, "identity") + _field(3, 1) + _field(4, 0) + _field(5, 1)
    return body + _field(2, trainer) + _field(3, normalizer)


def mobilevlm_config(layers: int = 24, narrow: bool = False) -> dict:
    cfg = copy.deepcopy(MOBILEVLM_V2_1P7B_CONFIG)
    cfg["num_hidden_layers"] = layers
    if narrow:
        cfg.update(NARROW_TEXT, num_key_value_heads=NARROW_TEXT["num_attention_heads"],
                   mm_hidden_size=NARROW_VISION["hidden_size"])
    return cfg


def build_mobilevlm(out: str, narrow: bool = False, layers: int = 24, seed: int = 2,
                    assets_dir: str = assets.DEFAULT_OUT) -> str:
    """OUT/MobileVLM_V2-1.7B[-narrow]: mtgv/MobileVLM_V2-1.7B as the hub has it - its config.json verbatim (all 24
    layers unless `layers` says otherwise), one bf16 pytorch_model.bin under the published key names with the CLIP
    ViT-L/14-336 tower inside (24 layers), LLaMA's tokenizer.model and no tokenizer.json, MobileLLaMA's side files,
    generation_config.json. Narrow: the narrow widths, a 2-layer 128-wide tower (still 336 px, 144 image tokens)."""
    from model.checkpoint import mobilevlm_keys
    final = os.path.join(os.path.abspath(out), "MobileVLM_V2-1.7B" + ("-narrow" if narrow else ""))
    stamp = f"mobilevlm narrow={narrow} layers={layers} seed={seed} build={BUILD_VERSION}\n"
    if _cached(final, stamp):
        return final
    tok_dir = assets.llama_tokenizer_dir(assets_dir)  # fetches the package the vocabulary comes from
    pieces, merges = assets.llama_vocab_and_merges(assets.fetch_llama_js(os.path.join(os.path.dirname(tok_dir),
                                                                                      "download")))
    cfg_dict = mobilevlm_config(layers, narrow)
    config = LlavaConfig.from_dict(cfg_dict)
    tower = dict(CLIP_L336_TOWER, **(dict(NARROW_VISION, num_hidden_layers=2) if narrow else {}))
    config.vision = dataclasses.replace(config.vision, **tower)
    with torch.device("meta"):
        shapes = Llava(config)
    state = mobilevlm_keys(random_state(shapes, torch.bfloat16, seed), config.projector_type)
    del shapes
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    torch.save(state, os.path.join(tmp, "pytorch_model.bin"))
    del state
    write_json(os.path.join(tmp, "config.json"), cfg_dict)
    with open(os.path.join(tmp, "tokenizer.model"), "wb") as f:
        f.write(llama_sentencepiece_model(pieces, merges))
    write_json(os.path.join(tmp, "tokenizer_config.json"), MOBILEVLM_TOKENIZER_CONFIG)
    write_json(os.path.join(tmp, "special_tokens_map.json"), {k: MOBILEVLM_TOKENIZER_CONFIG[k] for k in (
        "bos_token", "eos_token", "unk_token", "pad_token")})
    write_json(os.path.join(tmp, "generation_config.json"), MOBILEVLM_GENERATION)
    return _finish(tmp, final, stamp)


def build_clip(out: str, narrow: bool = False, layers: int = 2, seed: int = 1,
               assets_dir: str = assets.DEFAULT_OUT) -> str:
    """OUT/clip-vit-large-patch14-336[-narrow]: the openai CLIP checkpoint of the module docstring."""
    final = os.path.join(os.path.abspath(out), "clip-vit-large-patch14-336" + ("-narrow" if narrow else ""))
    stamp = f"clip narrow={narrow} layers={layers} seed={seed} build={BUILD_VERSION}\n"
    if _cached(final, stamp):
        return final
    tok_dir = assets.clip_tokenizer_dir(assets_dir)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    cfg_dict = clip_config(layers, narrow)
    write_json(os.path.join(tmp, "config.json"), cfg_dict)
    with torch.device("meta"):
        shapes = CLIPModel(CLIPConfig.from_dir(tmp))
    state = clip_keys(random_state(shapes, torch.float32, seed))
    save_state(state, tmp, max_shard_bytes=1 << 62, config=cfg_dict)  # one model.safetensors, like the hub's
    _copy_files(tok_dir, tmp, ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                               "merges.txt"))
    write_json(os.path.join(tmp, "preprocessor_config.json"), CLIP_PREPROCESSOR)
    return _finish(tmp, final, stamp)


def dir_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))


@torch.no_grad()
def check(name: str, d: str) -> None:
    """Load `d` strictly (fp32) and run one real-shape forward: a 336 px image + a vicuna_v1 prompt (576 image
    tokens) through the LLaVA, or two captions through the CLIP."""
    from PIL import Image
    from model import Tokenizer, load_image
    from model.tokenizer import VICUNA_SYSTEM, pad_sequences
    t0 = time.time()
    m = (CLIPModel if name == "clip" else Llava).from_pretrained(d, dtype=torch.float32)
    n = sum(p.numel() for p in m.parameters())
    print(f"  loaded strictly (fp32): {n / 1e6:.1f} M parameters in {time.time() - t0:.1f} s")
    tok = Tokenizer.from_pretrained(d)
    img = Image.new("RGB", (500, 375), (90, 140, 200))
    t0 = time.time()
    if name == "mobilevlm":  # tokenizer.model read by model/spm.py: the ids of the tokenizer.json of the same data
        ref = Tokenizer.from_pretrained(assets.llama_tokenizer_dir())
        # no leading space: there SentencePiece (and the legacy layout) adds a lone "▁", llava-hf's Metaspace does not
        for text in ("What is in the image?", "Describe it in  detail.\nCafé 東京 🤖 12345", VICUNA_SYSTEM):
            assert tok.encode(text) == ref.encode(text), f"{d}/tokenizer.model: ids differ on {text!r}"
        assert (tok.image_token_id, tok.pad_id, m.config.num_image_tokens) == (32000, 0, 144)
        print("  tokenizer.model: ids equal to the LLaMA tokenizer.json's on the test strings")
    if name in ("llava", "mobilevlm"):
        ids = torch.tensor([tok.encode_prompt("What is in the image?", m.config.num_image_tokens)])
        px = load_image(img, m.config.image_size, pad=True)[None]
        out = m(ids, px)  # (1, T, 32064)
    else:
        rows = [[tok.bos_id] + tok.encode(t) + [tok.eos_id] for t in ("a photo of a cat", "a blue sky")]
        ids, mask = pad_sequences(rows, tok.pad_id, side="right")
        out = m(ids, load_image(img, m.config.vision.image_size, pad=False)[None], mask)  # (1 image, 2 texts)
    assert torch.isfinite(out).all(), f"{d}: non-finite outputs"
    print(f"  forward {tuple(out.shape)} finite in {time.time() - t0:.1f} s")
    del m


def main(argv=None):
    ap = argparse.ArgumentParser(description="real-shape random LLaVA-1.5 / CLIP checkpoints for the rehearsal")
    ap.add_argument("--out", required=True)
    ap.add_argument("--narrow", action="store_true", help="narrow widths (CI speed), same files and vocabularies")
    ap.add_argument("--layers", type=int, default=2, help="depth of every tower (the hub has 32 / 24 / 12)")
    ap.add_argument("--check", action="store_true", help="load both back strictly and report time / peak memory")
    ap.add_argument("--mobilevlm", action="store_true", help="build MobileVLM_V2-1.7B (--layers 24 = the hub's)")
    a = ap.parse_args(argv)
    builds = [("mobilevlm", build_mobilevlm)] if a.mobilevlm else [("llava", build_llava), ("clip", build_clip)]
    for name, build in builds:
        t0 = time.time()
        d = build(a.out, narrow=a.narrow, layers=a.layers)
        print(f"{name}: {d}  {dir_bytes(d) / 1e6:.1f} MB, {time.time() - t0:.1f} s")
        if a.check:
            check(name, d)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
