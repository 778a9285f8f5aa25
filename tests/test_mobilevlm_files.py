"""MobileVLM checkpoint files: every hub layout read, the export in MobileVLM's own layout, and bad input.

Hub layouts (Meituan-AutoML / mtgv on the HF hub): one pytorch_model.bin (MobileVLM_V2-1.7B), .bin shards +
pytorch_model.bin.index.json (MobileVLM_V2-7B), model.safetensors (the variant added to MobileVLM_V2-3B), bf16 storage
(all of them). The export is checked two ways: at 1.7B's full size its names and shapes (built on the meta device)
against the key list derived from the official module tree, and at tiny size its file loads strictly into
transformers' LlamaForCausalLM + CLIPVisionModel (the modules MobileLlamaForCausalLM is made of) by its names.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import Llava
from model.checkpoint import mobilevlm_keys
from model.config import LlavaConfig
from model.hf_files import write_hf_files
from model_fixtures import hf_mobilevlm_parts, mobilevlm_config, projector_state, write_mobilevlm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# mtgv/MobileVLM_V2-1.7B config.json's model fields (reference notes section 1.2, the hub file)
V2_1P7B = {"architectures": ["MobileLlamaForCausalLM"], "model_type": "mobilevlm", "hidden_size": 2048,
           "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
           "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "max_sequence_length": 2048, "rope_theta": 10000.0,
           "rope_scaling": None, "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
           "hidden_act": "silu", "tie_word_embeddings": False, "mm_projector_type": "ldpnetv2", "mm_hidden_size": 1024,
           "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_select_layer": -2,
           "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
           "mm_use_im_patch_token": False, "vision_tower_type": "clip", "torch_dtype": "bfloat16"}


def published_v2_1p7b_keys() -> dict:
    """{key: shape} of mtgv/MobileVLM_V2-1.7B's pytorch_model.bin, derived from the official module tree.
    MobileLlamaForCausalLM = transformers' LlamaForCausalLM: model.embed_tokens, model.norm, lm_head and
    model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm};
    its `model` also holds vision_tower (CLIPVisionTower) -> .vision_tower (CLIPVisionModel of
    openai/clip-vit-large-patch14-336: 24 layers, 1024 wide, MLP 4096, 577 positions) -> .vision_model, and
    mm_projector (LDPNetV2Projector: mlp.mlp.{0,2}, peg.peg.0). The hub holds no index for this model (one .bin);
    the shapes follow from its config.json."""
    D, F, V, L = 2048, 5632, 32000, 24
    k = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    for i in range(L):
        p = f"model.layers.{i}."
        k.update({p + f"self_attn.{n}_proj.weight": (D, D) for n in "qkvo"})
        k.update({p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                  p + "mlp.down_proj.weight": (D, F), p + "input_layernorm.weight": (D,),
                  p + "post_attention_layernorm.weight": (D,)})
    t, Dv = "model.vision_tower.vision_tower.vision_model.", 1024
    k.update({t + "embeddings.class_embedding": (Dv,), t + "embeddings.patch_embedding.weight": (Dv, 3, 14, 14),
              t + "embeddings.position_embedding.weight": (577, Dv), t + "pre_layrnorm.weight": (Dv,),
              t + "pre_layrnorm.bias": (Dv,), t + "post_layernorm.weight": (Dv,), t + "post_layernorm.bias": (Dv,)})
    for i in range(24):
        p = t + f"encoder.layers.{i}."
        for n in "qkv":
            k.update({p + f"self_attn.{n}_proj.weight": (Dv, Dv), p + f"self_attn.{n}_proj.bias": (Dv,)})
        k.update({p + "self_attn.out_proj.weight": (Dv, Dv), p + "self_attn.out_proj.bias": (Dv,),
                  p + "mlp.fc1.weight": (4096, Dv), p + "mlp.fc1.bias": (4096,), p + "mlp.fc2.weight": (Dv, 4096),
                  p + "mlp.fc2.bias": (Dv,)})
        for n in ("layer_norm1", "layer_norm2"):
            k.update({p + f"{n}.weight": (Dv,), p + f"{n}.bias": (Dv,)})
    m = "model.mm_projector."
    k.update({m + "mlp.mlp.0.weight": (D, Dv), m + "mlp.mlp.0.bias": (D,), m + "mlp.mlp.2.weight": (D, D),
              m + "mlp.mlp.2.bias": (D,), m + "peg.peg.0.weight": (D, 1, 3, 3), m + "peg.peg.0.bias": (D,)})
    return k


def test_full_size_names_and_shapes_are_the_published_ones():
    config = LlavaConfig.from_dict(V2_1P7B)
    config.vision.num_hidden_layers, config.vision.intermediate_size = 24, 4096  # as the weights would say
    with torch.device("meta"):
        m = Llava(config)
    ours = {k: tuple(v.shape) for k, v in mobilevlm_keys(m.state_dict(), "ldpnetv2").items()}
    want = published_v2_1p7b_keys()
    assert ours == want
    assert config.num_image_tokens == 144 and config.to_mobilevlm_dict()["image_seq_length"] == 144
    assert 1.6e9 < sum(v.numel() for v in m.parameters()) < 1.8e9  # "1.7B": MobileLLaMA-1.4B + CLIP-L + LDPv2


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny V2 checkpoint as the hub has it: bf16 pytorch_model.bin, config.json, tokenizer side files."""
    cfg = mobilevlm_config()
    llama, tower = hf_mobilevlm_parts(cfg, vision_layers=2)
    proj = projector_state(cfg)
    root = tmp_path_factory.mktemp("mvlm_files")
    keys = write_mobilevlm(root / "bin", cfg, llama, tower, proj, fmt="bin", dtype=torch.bfloat16)
    (root / "bin" / "tokenizer.model").write_bytes(b"\x0a\x03<s>")  # copied byte for byte by the export
    (root / "bin" / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    (root / "bin" / "generation_config.json").write_text('{"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}')
    return root, cfg, (llama, tower, proj), keys


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("fmt", ["bin-sharded", "safetensors"])
def test_every_hub_file_layout_reads_the_same(base, fmt):
    root, cfg, (llama, tower, proj), _ = base
    write_mobilevlm(root / fmt, cfg, llama, tower, proj, fmt=fmt, dtype=torch.bfloat16)
    a, b = Llava.from_pretrained(root / "bin"), Llava.from_pretrained(root / fmt)
    assert states_equal(a, b) and a.lm_head.weight.dtype == torch.float32  # bf16 storage, fp32 as asked


def test_export_in_mobilevlm_layout(base, tmp_path):
    root, cfg, _, keys = base
    m = Llava.from_pretrained(root / "bin", dtype=torch.bfloat16)
    out = tmp_path / "export"
    m.save_pretrained(out)
    done = write_hf_files(str(out), m.config, tok=None, tokenizer_dir=str(root / "bin"), base_dir=str(root / "bin"))
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors",
                                       "tokenizer.model", "tokenizer_config.json"]
    assert (out / "tokenizer.model").read_bytes() == (root / "bin" / "tokenizer.model").read_bytes()
    assert set(done) == {"tokenizer.model", "tokenizer_config.json", "generation_config.json"}
    sd = load_file(out / "model.safetensors")
    assert sorted(sd) == keys and all(v.dtype == torch.bfloat16 for v in sd.values())
    written = json.loads((out / "config.json").read_text())
    for k, v in cfg.items():  # every field of the base's config.json, mm_* and the stale lit-gpt keys included
        assert written[k] == v or k == "torch_dtype", k
    assert written["torch_dtype"] == "bfloat16" and written["image_seq_length"] == 144
    assert states_equal(Llava.from_pretrained(out, dtype=torch.bfloat16), m)  # the project reads it back


def test_export_loads_into_the_official_module_tree(base, tmp_path):
    """Strict load_state_dict into the transformers modules MobileLlamaForCausalLM is built from: every name and shape
    of the export is one the official model has, and nothing it has is missing."""
    root, cfg, _, _ = base
    m = Llava.from_pretrained(root / "bin")
    m.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    llama, tower = hf_mobilevlm_parts(cfg, vision_layers=2, seed=5)
    t = "model.vision_tower.vision_tower."
    tower_sd = {k[len(t):]: v for k, v in sd.items() if k.startswith(t)}
    if not any(k.startswith("vision_model.") for k in tower.state_dict()):  # transformers 5 drops that level
        tower_sd = {k.removeprefix("vision_model."): v for k, v in tower_sd.items()}
    tower.load_state_dict(tower_sd, strict=True)
    llama.load_state_dict({k: v for k, v in sd.items() if not k.startswith((t, "model.mm_projector."))}, strict=True)
    assert sorted(k[len("model.mm_projector."):] for k in sd if k.startswith("model.mm_projector.")) == sorted(
        ["mlp.mlp.0.weight", "mlp.mlp.0.bias", "mlp.mlp.2.weight", "mlp.mlp.2.bias", "peg.peg.0.weight",
         "peg.peg.0.bias"])
    assert torch.equal(llama.lm_head.weight, m.lm_head.weight)


def test_bad_checkpoints_name_file_and_field(base, tmp_path):
    root, _, _, _ = base
    cases = [
        ({"mm_projector_type": "ldpnetv3"}, (), ValueError, r"config\.json: mm_projector_type='ldpnetv3'"),
        ({"image_seq_length": 576}, (), ValueError, r"config\.json: image_seq_length=576, but the ldpnetv2 projector"),
        ({"mm_hidden_size": 128}, (), ValueError, r"config\.json: mm_hidden_size=128, but the CLIP tower is 64 wide"),
        ({"mm_vision_tower": "openai/clip-vit-tiny-patch4-48"}, (), ValueError, r"name says patch 4"),
        ({"mm_use_im_start_end": True}, (), ValueError, r"config\.json: mm_use_im_start_end=true is not supported"),
        ({}, ("model.mm_projector.",), KeyError, r"no projector weights \(model\.mm_projector\.\*\)"),
        ({}, ("model.vision_tower.",), KeyError, r"no CLIP tower weights \(model\.vision_tower\.vision_tower\."),
        ({}, ("model.mm_projector.peg.",), KeyError, r"missing from the checkpoint: projector\.peg\.bias"),
    ]
    for i, (cfg, drop, exc, msg) in enumerate(cases):
        d = _edit_from(root, tmp_path / str(i), cfg, drop)
        with pytest.raises(exc, match=msg):
            Llava.from_pretrained(d)
    with pytest.raises(ValueError, match=r"holds its CLIP tower .*drop the vision tower argument"):
        Llava.from_pretrained(root / "bin", vision_tower=root / "bin")
    v1 = _edit_from(root, tmp_path / "v1", {"mm_projector_type": "ldpnet"}, ())
    with pytest.raises(ValueError, match=r"MobileVLM v1 \(mm_projector_type ldpnet in .*config\.json\) takes its CLIP "
                                         r"tower from openai/clip-vit-tiny-patch2-48"):
        Llava.from_pretrained(v1)


def _edit_from(root, d, cfg, drop):
    """A copy of the base's .bin checkpoint with config fields changed and keys starting with `drop` removed."""
    d.mkdir()
    sd = torch.load(root / "bin" / "pytorch_model.bin", weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith(drop)}, d / "pytorch_model.bin")
    base_cfg = json.loads((root / "bin" / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(base_cfg, **cfg)))
    return d


def test_truncated_or_empty_weight_files_are_named(base, tmp_path):
    root, _, _, _ = base
    m = Llava.from_pretrained(root / "bin")
    m.save_pretrained(tmp_path / "st")
    f = tmp_path / "st" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"st/model\.safetensors: not a readable safetensors file, truncated"):
        Llava.from_pretrained(tmp_path / "st")
    f.write_bytes(b"")
    with pytest.raises(ValueError, match=r"st/model\.safetensors: the file is empty"):
        Llava.from_pretrained(tmp_path / "st")
    b = _edit_from(root, tmp_path / "bin", {}, ())
    data = (b / "pytorch_model.bin").read_bytes()
    (b / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"bin/pytorch_model\.bin: not a torch\.save zip archive \(truncated"):
        Llava.from_pretrained(b)


def test_train_command_says_it_in_one_line(base, tmp_path):
    root, _, _, _ = base
    d = _edit_from(root, tmp_path / "bad", {"mm_projector_type": "ldpnetv3"}, ())
    r = subprocess.run([sys.executable, "train.py", "--mode=dpo", f"--init_from={d}", "--data=x.jsonl",
                        f"--out_dir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"train.py: --init_from={d}: {d}/config.json: mm_projector_type='ldpnetv3': a MobileVLM projector is one "
        "of ldpnetv2, ldpnet"]
