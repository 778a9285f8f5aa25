"""Generation throughput: model.Llava.generate vs transformers' LlavaForConditionalGeneration.generate on the same
random checkpoint (greedy, batched, left-padded prompts with one image each, a fixed number of new tokens).

    .venv/bin/python bench/generate.py                       # CPU defaults: hidden 512, 8 layers, batch 8, 64 new
    .venv/bin/python bench/generate.py --device cuda --dtype bfloat16 --layers 16 --hidden 1024

Both sides load the same safetensors file, must produce identical token ids (checked), and are timed end to end
(vision tower + prefill + decode), best of --repeats after one warm-up. transformers is only the reference here.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import Llava  # noqa: E402


def build_reference(path, a):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    text = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.hidden * 11 // 4,
                       num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                       max_position_embeddings=1024, rms_norm_eps=1e-5, eos_token_id=2, pad_token_id=a.vocab - 1)
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                              image_size=112, patch_size=14, hidden_act="quick_gelu")
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=a.vocab - 2, pad_token_id=a.vocab - 1,
                      vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=64)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(path)


def inputs(a, image_token, pad):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(a.batch):  # different prompt lengths, so rows are left-padded
        text = torch.randint(3, a.vocab - 2, (8 + 3 * i,), generator=g).tolist()
        rows.append([1] + [image_token] * 64 + text)
    T = max(map(len, rows))
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    px = torch.randn(a.batch, 3, 112, 112, generator=g)
    return ids, mask, px


def timed(fn, repeats, device):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32064)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    from transformers import LlavaForConditionalGeneration
    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        build_reference(d, a)
        ref = LlavaForConditionalGeneration.from_pretrained(d, dtype=dtype).to(a.device).eval()
        ours = Llava.from_pretrained(d, dtype=dtype, device=a.device)
        ids, mask, px = (t.to(a.device) for t in inputs(a, ours.config.image_token_id, ours.config.pad_token_id))
        px = px.to(dtype)
        n = a.new_tokens
        t_ours, out_ours = timed(lambda: ours.generate(ids, px, mask, max_new_tokens=n, min_new_tokens=n),
                                 a.repeats, a.device)
        t_ref, out_ref = timed(lambda: ref.generate(input_ids=ids, pixel_values=px, attention_mask=mask,
                                                    max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                    pad_token_id=ours.config.pad_token_id)[:, ids.shape[1]:],
                               a.repeats, a.device)
    same = torch.equal(out_ours, out_ref)
    tokens = a.batch * n
    print(f"config: hidden {a.hidden}, layers {a.layers}, heads {a.heads}/{a.kv_heads} kv, vocab {a.vocab}, "
          f"batch {a.batch}, prompt {ids.shape[1]} (64 image tokens), {n} new tokens, {a.device} {a.dtype}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':14s}{'seconds':>9s}{'tokens/s':>10s}")
    print(f"{'model/ (ours)':14s}{t_ours:9.3f}{tokens / t_ours:10.1f}")
    print(f"{'transformers':14s}{t_ref:9.3f}{tokens / t_ref:10.1f}")
    print(f"speed ratio ours/transformers: {t_ref / t_ours:.2f}x   identical tokens: {same}")
    if not same:
        sys.exit("generated tokens differ")


if __name__ == "__main__":
    main()
