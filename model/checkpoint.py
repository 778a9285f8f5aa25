"""Strict checkpoint loading and saving (safetensors) for the public layouts: llava-hf, liuhaotian, MobileVLM, CLIP.

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

  MobileVLM V2 / v1 (mtgv/MobileVLM_V2-1.7B ...): liuhaotian's names, the projector under model.mm_projector.* (its
  modules' names: see MOBILEVLM_PROJECTOR) and, in V2, the tower inside the file under
  model.vision_tower.vision_tower.vision_model.*; its widths and depth are read off those tensors. v1's tower comes
  from an openai CLIP dir, as the official loader does. Written back in the same layout (save_llava).

  openai CLIP (inside vision_model.*): embeddings.{class_embedding, patch_embedding, position_embedding},
  pre_layrnorm, encoder.layers.N.*, post_layernorm  ->  class_embedding, ..., layers.N.*, post_layernorm.

Files: model.safetensors, or shards listed in model.safetensors.index.json; pickles (pytorch_model.bin and its
index) only through torch.load(weights_only=True), memory-mapped. An empty, truncated or foreign file is an error
naming it. Weights are cast to the requested dtype.
"""
from __future__ import annotations

import os
import re
import zipfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import CLIPConfig, LlavaConfig, VisionConfig
from .files import atomic_path, read_json, write_json

IGNORE_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")


class CheckpointKeyError(KeyError, ValueError):
    """A key the checkpoint has and should not, or lacks: a KeyError (what strict loading raises) that is also a
    ValueError (what the command lines turn into one clean line), printed without KeyError's quotes."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""

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

# MobileVLM (Meituan-AutoML/MobileVLM): MobileLlamaForCausalLM = LlamaForCausalLM whose `model` also holds
# `vision_tower` (CLIPVisionTower -> .vision_tower = CLIPVisionModel -> .vision_model) and `mm_projector`. The projector
# names are the official modules' (mobilevlm/model/vision_projector.py): V2's FeatureIRLayer `mlp.mlp.{0,2}` and
# PosInjectLayer `peg.peg.0`; v1's LDPBlock under `model.`: `mlp.{1,3}` (0 is an Identity) and two torchvision
# InvertedResidual blocks `mb_block.{1,2}.block.{0: dw conv + norm, 1: squeeze-excite, 2: pw conv + norm}`.
MOBILEVLM_TOWER = "model.vision_tower.vision_tower.vision_model."
MOBILEVLM_PROJECTOR = {
    "ldpnetv2": [("model.mm_projector.mlp.mlp.0.", "projector.linear_1."),
                 ("model.mm_projector.mlp.mlp.2.", "projector.linear_2."),
                 ("model.mm_projector.peg.peg.0.", "projector.peg.")],
    "ldpnet": [("model.mm_projector.model.mlp.1.", "projector.linear_1."),
               ("model.mm_projector.model.mlp.3.", "projector.linear_2.")] + [
        (f"model.mm_projector.model.mb_block.{i}.block.{src}.", f"projector.block_{i}.{dst}.")
        for i in (1, 2) for src, dst in (("0.0", "dw"), ("0.1", "dw_norm"), ("1.fc1", "se_fc1"),
                                         ("1.fc2", "se_fc2"), ("2.0", "pw"), ("2.1", "pw_norm"))],
}


def mobilevlm_table(projector_type: str):
    """File names -> ours for a MobileVLM checkpoint with this projector (the projector rules before `model.`)."""
    return MOBILEVLM_PROJECTOR[projector_type] + [(MOBILEVLM_TOWER, "vision_tower.<clip>"),
                                                   ("model.", "language_model."), ("lm_head.", "lm_head.")]


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
def _weight_files(path: str) -> list[str]:
    """The weight files of a checkpoint directory: the index's shards, or the single file."""
    st_index, st_single = os.path.join(path, "model.safetensors.index.json"), os.path.join(path, "model.safetensors")
    pt_index, pt_single = os.path.join(path, "pytorch_model.bin.index.json"), os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(st_index) or os.path.isfile(pt_index):
        index = st_index if os.path.isfile(st_index) else pt_index
        idx = read_json(index)
        weight_map = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no weight_map object: not a weight index")
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(st_single) or os.path.isfile(pt_single):
        files = [os.path.basename(st_single if os.path.isfile(st_single) else pt_single)]
    else:
        raise FileNotFoundError(f"no weights in {path!r}: expected model.safetensors, model.safetensors.index.json, "
                                "pytorch_model.bin or pytorch_model.bin.index.json")
    out = []
    for name in files:
        fpath = os.path.join(path, name)
        if not os.path.isfile(fpath):
            raise FileNotFoundError(f"shard {fpath!r} listed in the index is missing")
        if os.path.getsize(fpath) == 0:
            raise ValueError(f"{fpath}: the file is empty (an interrupted download or copy?)")
        out.append(fpath)
    return out


def _open_safetensors(fpath: str):
    try:  # the header is checked against the file size here: a truncated file fails now, not mid-load
        return safe_open(fpath, framework="pt")
    except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) for a bad header
        raise ValueError(f"{fpath}: not a readable safetensors file, truncated or corrupt "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _load_pickle(fpath: str) -> dict:
    """A pytorch_model*.bin: tensors only (weights_only), memory-mapped (a 3 GB file is not read up front)."""
    if not zipfile.is_zipfile(fpath):  # torch.save's format since 1.6 is a zip: anything else is cut or foreign
        raise ValueError(f"{fpath}: not a torch.save zip archive (truncated, corrupt, or a legacy pickle); "
                         "re-download it")
    try:
        sd = torch.load(fpath, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # weights_only refuses pickled code: say which file, do not fall back
        raise ValueError(f"{fpath}: not a plain tensor pickle, refused by torch.load(weights_only=True) "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{fpath}: holds a {type(sd).__name__}, not a state dict")
    return sd


def _tensor_sources(path: str):
    """Yield (key, loader) for every tensor in the checkpoint directory; loader() returns the tensor."""
    for fpath in _weight_files(path):
        if fpath.endswith(".safetensors"):
            with _open_safetensors(fpath) as f:
                for k in f.keys():
                    yield k, (lambda f=f, k=k: f.get_tensor(k))
        else:  # a pickle: tensors only, never arbitrary objects
            for k, v in _load_pickle(fpath).items():
                yield k, (lambda v=v: v)


def tensor_shapes(path: str) -> dict:
    """{key: shape} of every tensor in the checkpoint directory, without reading the data."""
    out = {}
    for fpath in _weight_files(path):
        if fpath.endswith(".safetensors"):
            with _open_safetensors(fpath) as f:
                out.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        else:
            out.update({k: tuple(v.shape) for k, v in _load_pickle(fpath).items()})
    return out


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
        raise CheckpointKeyError(f"{source_name}: {len(unknown)} unexpected key(s): " + ", ".join(unknown[:10]))
    missing = sorted(set(params) - filled)
    if missing:
        raise CheckpointKeyError(f"{source_name}: {len(missing)} model parameter(s) missing from the checkpoint: "
                       + ", ".join(missing[:10]))


class _NoInit(torch.overrides.TorchFunctionMode):
    """torch.nn.init's in-place fills do nothing. Under the meta device they have no values to fill, and normal_ has
    no meta kernel: its Python fallback imports torch._dynamo on first use, ~1.5 s of every process that loads a
    checkpoint."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init" and func.__name__.endswith("_"):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def _empty(cls, config, dtype, device):
    with torch.device("meta"), _NoInit():  # no random init for weights that are about to be overwritten
        m = cls(config)
    return m.to_empty(device=device).to(dtype)


def _read_json(path):
    f = os.path.join(path, "config.json")
    if not os.path.isfile(f):
        raise FileNotFoundError(f"no config.json in {path!r}")
    return read_json(f)


def llava_sources(path, vision_tower=None):
    """(config, [(directory, rename table)], ignored key prefixes) for a LLaVA-family checkpoint directory in any
    layout it is read in: llava-hf, liuhaotian (+ an openai CLIP dir), MobileVLM V2, MobileVLM v1 (+ a CLIP dir)."""
    path = os.fspath(path)
    raw = _read_json(path)
    cfg_file = os.path.join(path, "config.json")
    config = LlavaConfig.from_dict(raw, source=cfg_file)
    if config.is_mobilevlm:
        sources, ignore = _mobilevlm_sources(path, config, vision_tower, cfg_file)
        return config, sources, ignore
    if "text_config" in raw:
        if vision_tower is not None:
            raise ValueError(f"{path} is a llava-hf checkpoint, which holds its CLIP tower: drop the vision tower "
                             f"argument ({vision_tower})")
        return config, [(path, LLAVA_HF)], ()
    if vision_tower is None:
        raise ValueError(f"{path!r} is a liuhaotian LLaVA checkpoint without its CLIP tower: pass "
                         "vision_tower=<openai CLIP directory>")
    config.vision = CLIPConfig.from_dir(vision_tower).vision
    return config, [(path, LIUHAOTIAN), (vision_tower, CLIP_AS_TOWER)], CLIP_UNUSED_BY_LLAVA


def takes_vision_tower(path) -> bool:
    """Whether the checkpoint in `path` is read with a separate openai CLIP directory (liuhaotian LLaVA-1.5, MobileVLM
    v1) rather than with the tower in its own weights (llava-hf, MobileVLM V2): what llava_sources asks for."""
    raw = _read_json(os.fspath(path))
    if raw.get("model_type") == "mobilevlm":
        return raw.get("mm_projector_type") == "ldpnet"
    return "text_config" not in raw


def load_llava(cls, path, dtype=torch.float32, device="cpu", vision_tower=None):
    config, sources, ignore = llava_sources(path, vision_tower)
    model = _empty(cls, config, dtype, device)
    load_into(model, sources, ignore_prefixes=ignore, source_name=os.fspath(path))
    return model.eval()


def tower_config_from_shapes(shapes: dict, prefix: str, patch: int, size: int, source: str) -> VisionConfig:
    """An openai CLIP vision tower's config from its weights: width from class_embedding, depth from the highest
    encoder.layers.N, MLP width from fc1; patch and pixels (from the tower's name) checked against the patch conv and
    the position table. Heads = width / 64: openai's ViTs (B/32, B/16, L/14) all use 64-wide heads, and no tensor
    shape says it."""
    def shape(k):
        if prefix + k not in shapes:
            raise CheckpointKeyError(f"{source}: the CLIP tower is incomplete: no {prefix + k}")
        return shapes[prefix + k]
    width = shape("embeddings.class_embedding")[0]
    layers = {int(m.group(1)) for k in shapes for m in [re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", k)]
              if m}
    if not layers:
        raise CheckpointKeyError(f"{source}: the CLIP tower has no {prefix}encoder.layers.*")
    n_layers = max(layers) + 1
    hidden = shape("encoder.layers.0.mlp.fc1.weight")[0]
    conv = shape("embeddings.patch_embedding.weight")  # (D, 3, p, p)
    if conv[2] != patch:
        raise ValueError(f"{source}: the tower's name says patch {patch}, its patch_embedding is {conv[2]} wide")
    positions = shape("embeddings.position_embedding.weight")[0]
    if positions != (size // patch) ** 2 + 1:
        raise ValueError(f"{source}: the tower's name says {size} px (patch {patch}: {(size // patch) ** 2 + 1} "
                         f"positions), its position_embedding has {positions}")
    if width % 64:
        raise ValueError(f"{source}: a CLIP tower {width} wide is not an openai ViT (64-wide heads)")
    return VisionConfig(hidden_size=width, intermediate_size=hidden, num_hidden_layers=n_layers,
                        num_attention_heads=width // 64, image_size=size, patch_size=patch, projection_dim=768)


def _mobilevlm_sources(path, config: LlavaConfig, vision_tower, cfg_file):
    """The sources and ignore list of a MobileVLM checkpoint; fills config.vision. V2 (ldpnetv2) holds its tower and
    the official loader uses it; v1 (ldpnet) has the official loader re-read openai's tower (load_pretrained_model
    calls vision_tower.load_model() unless the projector type contains "v2"), so here it comes from --vision_tower and
    any tower tensors in the file are ignored, as there."""
    shapes = tensor_shapes(path)
    ptype = config.projector_type
    if not any(k.startswith("model.mm_projector.") for k in shapes):
        raise CheckpointKeyError(f"{path}: no projector weights (model.mm_projector.*) in the checkpoint, which "
                                 f"{cfg_file} says is a MobileVLM ({ptype})")
    has_tower = any(k.startswith(MOBILEVLM_TOWER) for k in shapes)
    name = config.mobilevlm.get("mm_vision_tower")
    if ptype == "ldpnet":
        if vision_tower is None:
            raise ValueError(f"{path}: MobileVLM v1 (mm_projector_type ldpnet in {cfg_file}) takes its CLIP tower "
                             f"from {name}, as the official loader does: pass the vision tower (--vision_tower / "
                             "--vision-tower = a local copy of that openai CLIP directory)")
        config.vision = CLIPConfig.from_dir(vision_tower).vision
        sources = [(path, mobilevlm_table(ptype)), (vision_tower, CLIP_AS_TOWER)]
        ignore = ("model.vision_tower.",) + CLIP_UNUSED_BY_LLAVA
    else:
        if vision_tower is not None:
            raise ValueError(f"{path} holds its CLIP tower ({MOBILEVLM_TOWER}*; mm_projector_type {ptype}): drop the "
                             f"vision tower argument ({vision_tower}), the checkpoint's own tower is the one it was "
                             "trained with")
        if not has_tower:
            raise CheckpointKeyError(f"{path}: no CLIP tower weights ({MOBILEVLM_TOWER}*) in the checkpoint; "
                                     "MobileVLM V2 checkpoints hold theirs")
        patch, size = config.vision.patch_size, config.vision.image_size
        config.vision = tower_config_from_shapes(shapes, MOBILEVLM_TOWER, patch, size, path)
        sources, ignore = [(path, mobilevlm_table(ptype))], ()
    declared = config.mobilevlm.get("mm_hidden_size")
    if declared is not None and declared != config.vision.hidden_size:
        raise ValueError(f"{cfg_file}: mm_hidden_size={declared}, but the CLIP tower is {config.vision.hidden_size} "
                         "wide")
    config.check_image_tokens(config.mobilevlm.get("image_seq_length"), cfg_file)
    return sources, ignore


def load_clip(cls, path, dtype=torch.float32, device="cpu"):
    model = _empty(cls, CLIPConfig.from_dir(path), dtype, device)
    load_into(model, [(path, CLIP_FULL)], source_name=path)
    return model.eval()


def read_llava_state(path, vision_tower=None) -> dict:
    """A checkpoint directory's tensors (any layout llava_sources reads) under our names, in their stored dtype (no
    model built). Strict like load_into: a key no rule maps is an error; which keys must be there is the caller's."""
    _, sources, ignore = llava_sources(path, vision_tower)
    out, unknown = {}, []
    for src, table in sources:
        for key, get in _tensor_sources(src):
            if key.endswith(IGNORE_SUFFIXES) or key.startswith(tuple(ignore)):
                continue
            ours = map_key(key, table)
            if ours is None:
                unknown.append(f"{key} (in {src})")
            elif ours in out:
                raise ValueError(f"{key!r} (in {src}) maps to {ours!r}, which an earlier key already gave")
            else:
                out[ours] = get()
    if unknown:
        raise CheckpointKeyError(f"{os.fspath(path)}: {len(unknown)} unexpected key(s): " + ", ".join(unknown[:10]))
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


def mobilevlm_keys(state: dict, projector_type: str) -> dict:
    """Our names -> MobileVLM's published ones (model.layers.*, model.mm_projector.*, the tower under
    model.vision_tower.vision_tower.vision_model.*, lm_head), as MobileLlamaForCausalLM's state dict names them."""
    table = mobilevlm_table(projector_type)
    return {_inverse(k, table): v for k, v in state.items()}


def save_llava(model, path, max_shard_bytes):
    """llava-hf layout for LLaVA; MobileVLM's own layout (config.json with every mm_* field of the base, the
    published key names, the tower inside) for a MobileVLM model, which the official code and llama.cpp read."""
    if model.config.is_mobilevlm:
        state = mobilevlm_keys(model.state_dict(), model.config.projector_type)
        cfg = model.config.to_mobilevlm_dict()
    else:
        state = llava_hf_keys(model.state_dict())
        cfg = model.config.to_dict()
    cfg["torch_dtype"] = cfg["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")  # v4, v5 name
    save_state(state, path, max_shard_bytes, cfg)


def save_clip(model, path, max_shard_bytes):
    save_state(clip_keys(model.state_dict()), path, max_shard_bytes, model.config.to_dict())
