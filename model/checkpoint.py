"""Strict checkpoint loading and saving (safetensors) for the three public layouts.

Each layout is one explicit, ordered table of key-prefix renames from the file's names to this package's
module names, plus an explicit ignore list. Every key must be mapped or ignored, every parameter must be
filled, and every shape must match; the error names the offending key (and both shapes). Loading is always strict.

  llava-hf (legacy, hub files)        llava-hf (transformers >= 4.52)     ours
  language_model.model.*              model.language_model.*              language_model.*
  language_model.lm_head.*            lm_head.*                           lm_head.*
  vision_tower.vision_model.*         model.vision_tower.vision_model.*   vision_tower.*   (CLIP names below)
  multi_modal_projector.linear_1/2    model.multi_modal_projector.*       projector.linear_1/2
  (transformers 5 saves the legacy names except the tower, written as `vision_tower.*` with no `vision_model.`)

  liuhaotian LLaVA-1.5: model.embed_tokens/layers/norm -> language_model.*, lm_head, model.mm_projector.0/2 ->
  projector.linear_1/2, `rotary_emb.inv_freq` ignored; the CLIP tower comes from a separate openai CLIP dir.

  openai CLIP (inside vision_model.*): embeddings.{class_embedding, patch_embedding, position_embedding},
  pre_layrnorm, encoder.layers.N.*, post_layernorm  ->  class_embedding, ..., layers.N.*, post_layernorm.

Files: model.safetensors, or shards listed in model.safetensors.index.json; pickles (pytorch_model.bin and its
index) only through torch.load(weights_only=True). Weights are cast to the requested dtype.
"""
from __future__ import annotations

import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import CLIPConfig, LlavaConfig
from .files import atomic_path, read_json, write_json

IGNORE_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")

CLIP_INNER = [  # inside a CLIP tower: file name -> ours
    ("embeddings.class_embedding", "class_embedding"),
    ("embeddings.patch_embedding.", "patch_embedding."),
    ("embeddings.position_embedding.", "position_embedding."),
    ("embeddings.token_embedding.", "token_embedding."),
    ("encoder.layers.", "layers."),
    ("", ""),  # pre_layrnorm, post_layernorm, final_layer_norm keep their names
]

LLAVA_HF = [
    ("language_model.model.", "language_model."), ("model.language_model.", "language_model."),
    ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."),
    ("vision_tower.vision_model.", "vision_tower.<clip>"), ("model.vision_tower.vision_model.", "vision_tower.<clip>"),
    # transformers 5 holds the tower without the `vision_model.` level and saves it as `vision_tower.*`
    ("model.vision_tower.", "vision_tower.<clip>"), ("vision_tower.", "vision_tower.<clip>"),
    ("multi_modal_projector.", "projector."), ("model.multi_modal_projector.", "projector."),
]

LIUHAOTIAN = [
    ("model.mm_projector.0.", "projector.linear_1."), ("model.mm_projector.2.", "projector.linear_2."),
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower.<clip>"),  # present when saved with the tower
    ("model.", "language_model."), ("lm_head.", "lm_head."),
]

CLIP_AS_TOWER = [("vision_model.", "vision_tower.<clip>")]  # openai CLIP dir feeding a liuhaotian LLaVA
CLIP_UNUSED_BY_LLAVA = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")

CLIP_FULL = [("vision_model.", "vision_model.<clip>"), ("text_model.", "text_model.<clip>"),
             ("visual_projection.", "visual_projection."), ("text_projection.", "text_projection."),
             ("logit_scale", "logit_scale")]


def map_key(key: str, table) -> str | None:
    """File key -> our key through the first matching prefix rule (None: no rule matches)."""
    for src, dst in table:
        if key.startswith(src):
            rest = key[len(src):]
            if dst.endswith("<clip>"):
                for csrc, cdst in CLIP_INNER:
                    if rest.startswith(csrc):
                        return dst[: -len("<clip>")] + cdst + rest[len(csrc):]
            return dst + rest
    return None


# ---------------------------------------------------------------------- reading files
def _tensor_sources(path: str):
    """Yield (key, loader) for every tensor in the checkpoint directory; loader() returns the tensor."""
    st_index, st_single = os.path.join(path, "model.safetensors.index.json"), os.path.join(path, "model.safetensors")
    pt_index, pt_single = os.path.join(path, "pytorch_model.bin.index.json"), os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(st_index) or os.path.isfile(pt_index):
        index = st_index if os.path.isfile(st_index) else pt_index
        weight_map = read_json(index)["weight_map"]
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(st_single) or os.path.isfile(pt_single):
        files = [os.path.basename(st_single if os.path.isfile(st_single) else pt_single)]
    else:
        raise FileNotFoundError(f"no weights in {path!r}: expected model.safetensors, model.safetensors.index.json, "
                                "pytorch_model.bin or pytorch_model.bin.index.json")
    for name in files:
        fpath = os.path.join(path, name)
        if not os.path.isfile(fpath):
            raise FileNotFoundError(f"shard {fpath!r} listed in the index is missing")
        if name.endswith(".safetensors"):
            with safe_open(fpath, framework="pt") as f:
                for k in f.keys():
                    yield k, (lambda f=f, k=k: f.get_tensor(k))
        else:  # a pickle: tensors only, never arbitrary objects
            try:
                sd = torch.load(fpath, map_location="cpu", weights_only=True)
            except Exception as e:  # weights_only refuses pickled code: say which file, do not fall back
                raise ValueError(f"{fpath}: not a plain tensor pickle, refused by torch.load(weights_only=True) "
                                 f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
            for k, v in sd.items():
                yield k, (lambda v=v: v)


def load_into(module: torch.nn.Module, sources, ignore_prefixes=(), source_name="checkpoint"):
    """Copy every mapped tensor into `module` (strict). `sources` = [(directory, rename table), ...]."""
    params = dict(module.state_dict())
    filled, unknown = set(), []
    for path, tbl in sources:
        for key, get in _tensor_sources(path):
            if key.endswith(IGNORE_SUFFIXES) or key.startswith(tuple(ignore_prefixes)):
                continue
            ours = map_key(key, tbl)
            if ours is None or ours not in params:
                unknown.append(f"{key} (in {path})")
                continue
            if ours in filled:
                raise ValueError(f"{key!r} (in {path}) fills {ours!r}, which an earlier key already filled "
                                 "(a checkpoint mixing two key layouts?)")
            t = get()
            if tuple(t.shape) != tuple(params[ours].shape):
                raise ValueError(f"shape mismatch for {key!r} (in {path}): checkpoint {tuple(t.shape)} vs model "
                                 f"{tuple(params[ours].shape)} ({ours})")
            with torch.no_grad():
                params[ours].copy_(t.to(params[ours].dtype))
            filled.add(ours)
    if unknown:
        raise KeyError(f"{source_name}: {len(unknown)} unexpected key(s): " + ", ".join(unknown[:10]))
    missing = sorted(set(params) - filled)
    if missing:
        raise KeyError(f"{source_name}: {len(missing)} model parameter(s) missing from the checkpoint: "
                       + ", ".join(missing[:10]))


def _empty(cls, config, dtype, device):
    with torch.device("meta"):  # no random init for weights that are about to be overwritten
        m = cls(config)
    return m.to_empty(device=device).to(dtype)


def _read_json(path):
    f = os.path.join(path, "config.json")
    if not os.path.isfile(f):
        raise FileNotFoundError(f"no config.json in {path!r}")
    return read_json(f)


def load_llava(cls, path, dtype=torch.float32, device="cpu", vision_tower=None):
    raw = _read_json(path)
    config = LlavaConfig.from_dict(raw, source=os.path.join(path, "config.json"))
    liuhaotian = "text_config" not in raw
    sources = [(path, LIUHAOTIAN if liuhaotian else LLAVA_HF)]
    if liuhaotian:
        if vision_tower is None:
            raise ValueError(f"{path!r} is a liuhaotian LLaVA checkpoint without its CLIP tower: pass "
                             "vision_tower=<openai CLIP directory>")
        config.vision = CLIPConfig.from_dir(vision_tower).vision
        sources.append((vision_tower, CLIP_AS_TOWER))
    model = _empty(cls, config, dtype, device)
    load_into(model, sources, ignore_prefixes=CLIP_UNUSED_BY_LLAVA if liuhaotian else (), source_name=path)
    return model.eval()


def load_clip(cls, path, dtype=torch.float32, device="cpu"):
    model = _empty(cls, CLIPConfig.from_dir(path), dtype, device)
    load_into(model, [(path, CLIP_FULL)], source_name=path)
    return model.eval()


def read_llava_state(path) -> dict:
    """A llava-hf directory's tensors under our names, in their stored dtype (no model built). Strict like
    load_into: a key no rule maps is an error; which keys must be there is the caller's check."""
    path = os.fspath(path)
    out, unknown = {}, []
    for key, get in _tensor_sources(path):
        if key.endswith(IGNORE_SUFFIXES):
            continue
        ours = map_key(key, LLAVA_HF)
        if ours is None:
            unknown.append(key)
        elif ours in out:
            raise ValueError(f"{key!r} (in {path}) maps to {ours!r}, which an earlier key already gave")
        else:
            out[ours] = get()
    if unknown:
        raise KeyError(f"{path}: {len(unknown)} unexpected key(s): " + ", ".join(unknown[:10]))
    return out


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def stored_dtype(path) -> torch.dtype | None:
    """The precision a checkpoint was published in: config.json's `torch_dtype` (v4) / `dtype` (v5), top level or
    text_config, else the dtype of its first floating-point tensor on disk. None when neither says."""
    path = os.fspath(path)
    cfg = _read_json(path)
    for d in (cfg, cfg.get("text_config") or {}):
        for k in ("torch_dtype", "dtype"):
            if d.get(k) in DTYPES:
                return DTYPES[d[k]]
    for key, get in _tensor_sources(path):
        t = get()
        if t.is_floating_point():
            return t.dtype
    return None


# ---------------------------------------------------------------------- writing
def _inverse(our_key: str, table) -> str:
    for src, dst in table:
        if dst.endswith("<clip>") and our_key.startswith(dst[: -len("<clip>")]):
            rest = our_key[len(dst) - len("<clip>"):]
            for csrc, cdst in CLIP_INNER:
                if rest.startswith(cdst) and cdst:
                    return src + csrc + rest[len(cdst):]
            return src + rest
        if not dst.endswith("<clip>") and our_key.startswith(dst):
            return src + our_key[len(dst):]
    raise KeyError(our_key)


def save_state(state: dict, path: str, max_shard_bytes: int, config: dict):
    """Write config.json + safetensors (sharded with an index above max_shard_bytes); each file atomically."""
    os.makedirs(path, exist_ok=True)
    shards, cur, size = [], {}, 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if cur and size + n > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v.detach().contiguous().cpu(), size + n
    shards.append(cur)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        with atomic_path(os.path.join(path, name)) as tmp:
            save_file(shard, tmp, metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        write_json(os.path.join(path, "model.safetensors.index.json"), index)
    elif os.path.exists(os.path.join(path, "model.safetensors.index.json")):
        os.remove(os.path.join(path, "model.safetensors.index.json"))  # a stale index would shadow the new file
    write_json(os.path.join(path, "config.json"), config)


def llava_hf_keys(state: dict) -> dict:
    """Our names -> the hub's legacy llava-hf names (language_model.model.*, vision_tower.vision_model.*, ...):
    the hub's own files use them, and every transformers version maps them on load."""
    table = [LLAVA_HF[0], LLAVA_HF[2], LLAVA_HF[4], LLAVA_HF[8]]
    return {_inverse(k, table): v for k, v in state.items()}


def clip_keys(state: dict) -> dict:
    """Our names -> openai CLIP's (vision_model.*, text_model.*, visual_projection, text_projection, logit_scale)."""
    return {_inverse(k, CLIP_FULL): v for k, v in state.items()}


def save_llava(model, path, max_shard_bytes):
    state = llava_hf_keys(model.state_dict())
    cfg = model.config.to_dict()
    cfg["torch_dtype"] = cfg["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")  # v4, v5 name
    save_state(state, path, max_shard_bytes, cfg)


def save_clip(model, path, max_shard_bytes):
    save_state(clip_keys(model.state_dict()), path, max_shard_bytes, model.config.to_dict())
