"""Tiny random checkpoints in the exact public layouts, built with transformers (test-only reference).

  make_hf_llava(dir, kv_heads)      transformers LlavaForConditionalGeneration.save_pretrained (5.x keys)
  write_prefixes(hf, dir, style)    the hub's legacy or transformers-4.52+ key prefixes (5.x saves a third mix)
  make_liuhaotian(hf, dir, clip)    original LLaVA-1.5 layout + a separate openai CLIP-vision directory
  make_hf_clip(dir)                 transformers CLIPModel (vision_model.*, text_model.*, projections, logit_scale)

Weights are re-drawn with a larger std than transformers' 0.02 init so logits are well separated and a greedy
continuation is not decided by float noise.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

IMAGE_SIZE, PATCH = 32, 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2  # 16 patches, CLS dropped
VOCAB, IMAGE_TOKEN, PAD_TOKEN, EOS = 300, 296, 297, 2


def _randomize(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name or "layrnorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return model


def hf_llava_config(kv_heads: int = 2, vision_layers: int = 3):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                       rms_norm_eps=1e-5, rope_theta=20000.0, hidden_act="silu", bos_token_id=1, eos_token_id=EOS,
                       pad_token_id=PAD_TOKEN, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5, projection_dim=24)
    # LLaVA-1.5 values stated explicitly rather than trusted to the installed defaults
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, pad_token_id=PAD_TOKEN,
                       projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_seq_length=NUM_IMAGE_TOKENS, tie_word_embeddings=False)


def make_hf_llava(path: str, kv_heads: int = 2, seed: int = 0, **save_kw):
    """Save a random tiny llava-hf checkpoint with transformers; returns the transformers model (fp32, eval)."""
    from transformers import LlavaForConditionalGeneration
    torch.manual_seed(seed)
    m = LlavaForConditionalGeneration(hf_llava_config(kv_heads)).eval()
    _randomize(m, seed)
    m.save_pretrained(path, **save_kw)
    return m


def write_prefixes(hf_model, path: str, style: str):
    """Write model.safetensors + config.json from a transformers model's in-memory keys in one public layout:
    "legacy" = the hub files (language_model.model.*, language_model.lm_head, vision_tower.vision_model.*,
    multi_modal_projector.*); "new" = transformers 4.52-4.x (model.language_model.*, lm_head,
    model.vision_tower.vision_model.*, model.multi_modal_projector.*). Returns the sorted key list."""
    rules = {"legacy": [("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                        ("model.vision_tower.", "vision_tower.vision_model."),
                        ("model.multi_modal_projector.", "multi_modal_projector.")],
             "new": [("model.vision_tower.", "model.vision_tower.vision_model.")]}[style]
    out = {}
    for k, v in hf_model.state_dict().items():
        for a, b in rules:
            if k.startswith(a):
                k = b + k[len(a):]
                break
        out[k] = v.contiguous()
    hf_model.save_pretrained(path)  # for config.json; the weights are replaced below
    save_file(out, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return sorted(out)


def make_liuhaotian(hf_model, path: str, clip_dir: str, bin_format: bool = False, dtype=torch.float32):
    """Write the original LLaVA-1.5 layout (model.layers.*, model.mm_projector.0/2, inv_freq buffers) and an openai
    CLIP-vision directory (vision_model.*, with the legacy position_ids buffer) from a transformers Llava model."""
    tc, vc = hf_model.config.text_config, hf_model.config.vision_config
    sd = {}
    for k, v in hf_model.state_dict().items():
        v = v.to(dtype)
        if k.startswith("model.language_model."):
            sd["model." + k[len("model.language_model."):]] = v
        elif k == "lm_head.weight":
            sd[k] = v
        elif k.startswith("model.multi_modal_projector.linear_"):
            i = {"1": "0", "2": "2"}[k[len("model.multi_modal_projector.linear_")]]
            sd[f"model.mm_projector.{i}." + k.split(".")[-1]] = v
    hd = tc.hidden_size // tc.num_attention_heads
    for i in range(tc.num_hidden_layers):  # the transformers-4.31-era buffer the loader must ignore
        sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = 1.0 / 20000 ** (torch.arange(0, hd, 2).float() / hd)
    os.makedirs(path, exist_ok=True)
    if bin_format:
        torch.save(sd, os.path.join(path, "pytorch_model.bin"))
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(path, "model.safetensors"))
    cfg = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
           "hidden_size": tc.hidden_size, "intermediate_size": tc.intermediate_size,
           "num_attention_heads": tc.num_attention_heads, "num_hidden_layers": tc.num_hidden_layers,
           "num_key_value_heads": tc.num_key_value_heads, "hidden_act": "silu", "max_position_embeddings": 256,
           "rms_norm_eps": tc.rms_norm_eps, "rope_theta": 20000.0, "rope_scaling": None,
           "tie_word_embeddings": False, "vocab_size": tc.vocab_size, "bos_token_id": 1, "eos_token_id": EOS,
           "pad_token_id": 0, "mm_vision_tower": "openai/clip-vit-tiny", "mm_vision_select_layer": -2,
           "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": vc.hidden_size,
           "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "image_aspect_ratio": "pad",
           "mm_patch_merge_type": "flat", "image_token_index": IMAGE_TOKEN, "torch_dtype": "float16"}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    # the CLIP tower: what CLIPVisionModel.save_pretrained writes (vision_model.* keys), plus position_ids
    os.makedirs(clip_dir, exist_ok=True)
    vsd = {"vision_model." + k[len("model.vision_tower."):]: v.to(dtype).contiguous()
           for k, v in hf_model.state_dict().items() if k.startswith("model.vision_tower.")}
    vsd["vision_model.embeddings.position_ids"] = torch.arange((IMAGE_SIZE // PATCH) ** 2 + 1)[None]
    save_file(vsd, os.path.join(clip_dir, "model.safetensors"))
    vdict = vc.to_dict()
    vdict["model_type"] = "clip_vision_model"
    with open(os.path.join(clip_dir, "config.json"), "w") as f:
        json.dump(vdict, f)


def pixels(n: int, seed: int = 0):
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def prompts():
    """Two left-padded prompts, each with one image: input_ids (2, T), attention_mask (2, T)."""
    img = [IMAGE_TOKEN] * NUM_IMAGE_TOKENS
    a = [1, 17, 42] + img + [99, 7, 250, 31, 5]
    b = [1] + img + [63, 12]
    T = max(len(a), len(b))
    ids = torch.tensor([[PAD_TOKEN] * (T - len(r)) + r for r in (a, b)])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in (a, b)])
    return ids, mask


def make_hf_clip(path: str, eos_token_id: int = 3, seed: int = 0):
    """A tiny transformers CLIPModel saved in the openai layout; eos_token_id 3 mimics a word-level tokenizer's
    end token (pooling at its first occurrence), 2 selects transformers' legacy argmax pooling."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
    text = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=16, hidden_act="quick_gelu",
                          pad_token_id=0, bos_token_id=1, eos_token_id=eos_token_id, projection_dim=24)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=PATCH, hidden_act="quick_gelu", projection_dim=24)
    torch.manual_seed(seed)
    m = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=24)).eval()
    _randomize(m, seed)
    with torch.no_grad():
        m.logit_scale.fill_(2.3)
    m.save_pretrained(path)
    return m


# ---------------------------------------------------------------------------------------------- MobileVLM
MVLM_SIZE, MVLM_PATCH = 48, 2  # a 24 x 24 patch grid, as at 336 px / patch 14: LDPv2's 12 x 12 pool is a 2 x 2 mean
MVLM_TOWER = f"openai/clip-vit-tiny-patch{MVLM_PATCH}-{MVLM_SIZE}"  # patch and pixels are read off this name
MVLM_TOKENS = 144


def mobilevlm_config(text_width=64, text_layers=2, heads=4, vision_width=64, projector="ldpnetv2", vocab=VOCAB):
    """A tiny config.json in MobileVLM_V2-1.7B's layout (HF LLaMA fields + mm_*, field for field as the hub file),
    plus the 3B file's stale lit-gpt keys, which a loader must ignore."""
    return {"architectures": ["MobileLlamaForCausalLM"], "model_type": "mobilevlm", "bos_token_id": 1,
            "eos_token_id": EOS, "pad_token_id": 0, "hidden_act": "silu", "hidden_size": text_width,
            "intermediate_size": 2 * text_width + 16, "initializer_range": 0.02, "max_position_embeddings": 512,
            "max_sequence_length": 512, "num_attention_heads": heads, "num_hidden_layers": text_layers,
            "num_key_value_heads": heads, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.33.1",
            "use_cache": True, "vocab_size": vocab, "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "pad",
            "image_grid_pinpoints": None, "mm_hidden_size": vision_width, "mm_projector_lr": None,
            "mm_projector_type": projector, "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
            "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2, "mm_vision_tower": MVLM_TOWER,
            "tune_mm_mlp_adapter": False, "use_mm_proj": True, "vision_tower_type": "clip",
            # MobileVLM_V2-3B's config.json also holds these (a lit-gpt leftover): deliberately wrong here
            "n_head": heads * 2, "n_embd": text_width * 2, "n_query_groups": 1, "norm_eps": 0.5, "block_size": 7,
            "name": "huggy_llama_3b"}


def hf_mobilevlm_parts(cfg: dict, vision_layers=3, seed=0):
    """The independent reference's modules: transformers LlamaForCausalLM + CLIPVisionModel (random, fp32, eval)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "bos_token_id",
        "eos_token_id", "pad_token_id", "tie_word_embeddings", "hidden_act")})).eval()
    w = cfg["mm_hidden_size"]
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=w, intermediate_size=2 * w + 32,
                                             num_hidden_layers=vision_layers, num_attention_heads=w // 64,
                                             image_size=MVLM_SIZE, patch_size=MVLM_PATCH, hidden_act="quick_gelu",
                                             layer_norm_eps=1e-5, projection_dim=24)).eval()
    return _randomize(llama, seed), _randomize(tower, seed + 1)


def projector_state(cfg: dict, seed=0) -> dict:
    """Random projector tensors under the published names (model.mm_projector.*), V2 or v1."""
    g = torch.Generator().manual_seed(seed + 7)
    dv, d = cfg["mm_hidden_size"], cfg["hidden_size"]
    if cfg["mm_projector_type"] == "ldpnetv2":
        shapes = {"mlp.mlp.0.weight": (d, dv), "mlp.mlp.0.bias": (d,), "mlp.mlp.2.weight": (d, d),
                  "mlp.mlp.2.bias": (d,), "peg.peg.0.weight": (d, 1, 3, 3), "peg.peg.0.bias": (d,)}
    else:
        s = max(8, int(d // 4 + 4) // 8 * 8)  # torchvision's _make_divisible(d // 4, 8)
        shapes = {"model.mlp.1.weight": (d, dv), "model.mlp.1.bias": (d,), "model.mlp.3.weight": (d, d),
                  "model.mlp.3.bias": (d,)}
        for i in (1, 2):
            b = f"model.mb_block.{i}.block."
            shapes.update({b + "0.0.weight": (d, 1, 3, 3), b + "0.1.weight": (d,), b + "0.1.bias": (d,),
                           b + "1.fc1.weight": (s, d, 1, 1), b + "1.fc1.bias": (s,), b + "1.fc2.weight": (d, s, 1, 1),
                           b + "1.fc2.bias": (d,), b + "2.0.weight": (d, d, 1, 1), b + "2.1.weight": (d,),
                           b + "2.1.bias": (d,)})
    out = {}
    for k, shp in shapes.items():
        if k.endswith("1.weight") and len(shp) == 1:  # the LayerNorms' gains
            out[k] = 1.0 + 0.1 * torch.randn(shp, generator=g)
        else:
            fan_in = max(1, torch.Size(shp[1:]).numel()) if len(shp) > 1 else 10
            out[k] = torch.randn(shp, generator=g) * (1.5 / fan_in ** 0.5)
    return {"model.mm_projector." + k: v for k, v in out.items()}


def write_mobilevlm(path, cfg: dict, llama, tower, proj: dict, fmt="bin", dtype=torch.float32, clip_dir=None):
    """A MobileVLM checkpoint directory as the hub has it: config.json, the weights under the published names
    (model.*, lm_head, model.mm_projector.*, V2: the tower under model.vision_tower.vision_tower.vision_model.*) as
    pytorch_model.bin ("bin"), two .bin shards + pytorch_model.bin.index.json ("bin-sharded") or model.safetensors.
    v1 (ldpnet): the tower goes to `clip_dir` (an openai CLIP-vision directory) and the file holds a copy too, which
    the official loader overwrites."""
    os.makedirs(path, exist_ok=True)
    sd = {k: v.to(dtype) for k, v in llama.state_dict().items()}
    sd.update({k: v.to(dtype) for k, v in proj.items()})
    # openai / transformers-4 names (vision_model.*); transformers 5 holds CLIPVisionModel without that level
    tower_sd = {("" if k.startswith("vision_model.") else "vision_model.") + k: v.to(dtype).contiguous()
                for k, v in tower.state_dict().items()}
    sd.update({"model.vision_tower.vision_tower." + k: v for k, v in tower_sd.items()})
    if clip_dir is not None:
        os.makedirs(clip_dir, exist_ok=True)
        save_file(tower_sd, os.path.join(clip_dir, "model.safetensors"))
        vc = tower.config.to_dict()
        vc["model_type"] = "clip_vision_model"
        with open(os.path.join(clip_dir, "config.json"), "w") as f:
            json.dump(vc, f)
    sd = {k: v.contiguous() for k, v in sd.items()}
    if fmt == "bin":
        torch.save(sd, os.path.join(path, "pytorch_model.bin"))
    elif fmt == "bin-sharded":
        keys = sorted(sd)
        halves = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
                  "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
        for name, ks in halves.items():
            torch.save({k: sd[k] for k in ks}, os.path.join(path, name))
        with open(os.path.join(path, "pytorch_model.bin.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": {k: n for n, ks in halves.items() for k in ks}}, f)
    else:
        save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(dict(cfg, torch_dtype=str(dtype).replace("torch.", "")), f, indent=2)
    return sorted(sd)
