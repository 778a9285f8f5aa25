"""train_state.export_model: the exported directory is what transformers and vLLM load, in the base's precision.

A tiny LLaVA with the real LLaMA tokenizer (vocab 32064, <image> 32000, <pad> 32001; rehearsal/assets.py) is saved
as an fp16 base, loaded in bf16 as CUDA LoRA training holds it, given "trained" adapters and exported. Then:
  - transformers' AutoProcessor (from the exported files alone) renders the chat template, pads the non-square image
    to a square (LlavaImageProcessor do_pad) and expands <image>; its pixels equal model/image.load_image(pad=True),
    its ids equal ours up to the documented "▁" after the image; LlavaForConditionalGeneration.generate and
    Llava.generate give the same greedy tokens;
  - every tensor is fp16 and equals the fp16 base + the fp32 LoRA delta rounded once (not through bf16).
"""
import json
import os
import types

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from model import Llava, LlavaConfig, TextConfig, Tokenizer, VisionConfig, load_image
from model.lora import LoRALinear, apply_lora
from model.tokenizer import VICUNA_SYSTEM
from rehearsal import assets
from train_state import export_model

S, P = 56, 14  # 16 image tokens
N_IMG = (S // P) ** 2


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def tiny_llava(seed=0):
    cfg = LlavaConfig(vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, image_size=S, patch_size=P, projection_dim=16),
                      text=TextConfig(vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      rms_norm_eps=1e-5),
                      image_token_id=32000, pad_token_id=32001, image_aspect_ratio="pad")
    m = Llava(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    for name, p in m.named_parameters():  # well separated logits: greedy is not decided by rounding noise
        is_norm = "norm" in name or "layrnorm" in name
        p.requires_grad_(False).copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if is_norm
                                      else 0.15 * torch.randn(p.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(base dir, export dir, the trained in-memory model)."""
    root = tmp_path_factory.mktemp("export")
    base = root / "base"
    with torch.no_grad():
        tiny_llava().half().save_pretrained(base)  # an fp16 base, as LLaVA-1.5 is published
    llama = assets.llama_tokenizer_dir(os.environ.get("POVID_ASSETS", assets.DEFAULT_OUT))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        with open(os.path.join(llama, name), "rb") as f:
            (base / name).write_bytes(f.read())
    model = Llava.from_pretrained(base, dtype=torch.bfloat16)  # the frozen weights as LoRA training on CUDA holds them
    model.requires_grad_(False)  # as train.py: only the adapters train
    apply_lora(model.language_model, rank=4, alpha=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():  # what training would have made of the adapters
            if isinstance(mod, LoRALinear):
                mod.lora_A.copy_(0.3 * torch.randn(mod.lora_A.shape, generator=g))
                mod.lora_B.copy_(0.3 * torch.randn(mod.lora_B.shape, generator=g))
    cfg = types.SimpleNamespace(init_from=str(base), lora_rank=4, lora_alpha=8, out_dir=str(root), fsdp=False,
                                tokenizer="", model_config="", template="vicuna_v1")
    tok = Tokenizer.from_pretrained(base)
    path = export_model(cfg, None, model, tok, 0)
    return base, path, model


def tensors(d):
    out = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(d, name), framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def test_files_and_fp16_without_bf16_rounding(exported):
    base, path, model = exported
    assert sorted(os.listdir(path)) == sorted([
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "added_tokens.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
        "generation_config.json"])
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "float16"
    with open(os.path.join(path, "generation_config.json")) as f:
        assert json.load(f) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001}
    with open(os.path.join(path, "preprocessor_config.json")) as f:
        pre = json.load(f)
    assert (pre["image_processor_type"], pre["do_pad"], pre["crop_size"]) == ("LlavaImageProcessor", True,
                                                                             {"height": S, "width": S})
    out, src = tensors(path), tensors(base)
    assert out.keys() == src.keys() and all(t.dtype == torch.float16 for t in out.values())
    key = "language_model.model.layers.1.self_attn.q_proj.weight"
    lora = model.language_model.layers[1].self_attn.q_proj
    delta = (lora.lora_B.float() @ lora.lora_A.float()) * lora.scale
    want = (src[key].float() + delta).half()  # the fp16 base + the fp32 delta, rounded once
    assert torch.equal(out[key], want)
    via_bf16 = (src[key].bfloat16().float() + delta).bfloat16().half()  # what merging the training copy gives
    assert (via_bf16 != want).float().mean() > 0.5  # so the check above can fail
    untouched = "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"  # frozen, never wrapped
    assert torch.equal(out[untouched], src[untouched])
    assert not torch.equal(src[untouched].bfloat16().half(), src[untouched])  # bf16 would have changed it


def test_transformers_processor_and_greedy_tokens_match(exported):
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    _, path, _ = exported
    proc = AutoProcessor.from_pretrained(path)
    hf = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    ours = Llava.from_pretrained(path)
    question = "What is in this image?"
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = proc.apply_chat_template(conv, add_generation_prompt=True)
    assert text == f"{VICUNA_SYSTEM} USER: <image>\n{question} ASSISTANT:"
    g = torch.Generator().manual_seed(0)
    img = Image.fromarray((torch.rand(40, 90, 3, generator=g) * 255).to(torch.uint8).numpy())  # wide: padded
    inputs = proc(images=img, text=text, return_tensors="pt")
    px = load_image(img, size=S, pad=True)
    assert inputs["pixel_values"].shape == (1, 3, S, S)
    assert torch.allclose(inputs["pixel_values"][0], px, atol=1e-5)  # expand2square (122, 116, 104) + CLIP
    tok = Tokenizer.from_pretrained(path)
    mine = tok.encode_prompt(question, N_IMG, "vicuna_v1")
    after = mine.index(32000) + N_IMG
    assert mine[after:after + 2] == [29871, 13]  # the original LLaVA's chunked "▁\n" after the image
    assert inputs["input_ids"][0].tolist() == mine[:after] + mine[after + 1:]  # one string: "\n" alone
    theirs = hf.generate(**inputs, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    got = ours.generate(inputs["input_ids"], px[None], max_new_tokens=10, min_new_tokens=10)
    assert torch.equal(got[0], theirs[0, inputs["input_ids"].shape[1]:])
    assert len(set(got[0].tolist())) > 1  # a real continuation, not one repeated token


def test_chat_templates_render_the_training_prompt():
    """The written Jinja renders what model/tokenizer.py's templates tokenize (multi-turn, a system override)."""
    from transformers.utils.chat_template_utils import render_jinja_template
    from model.hf_files import chat_template
    conv = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            {"role": "user", "content": "And the color?"}]

    def render(template, messages):
        return render_jinja_template(conversations=[messages], chat_template=chat_template(template),
                                     add_generation_prompt=True)[0][0]
    assert render("vicuna_v1", conv) == (f"{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>"
                                         "USER: And the color? ASSISTANT:")
    assert render("vicuna_v1", [{"role": "system", "content": "Be brief."}] + conv[:1]) == \
        "Be brief. USER: <image>\nWhat is it? ASSISTANT:"
    assert render("llava_hf", conv[:2]) == "USER: <image>\nWhat is it? ASSISTANT: A cat. ASSISTANT:"
