"""clip-rank's generation throughput: K samples per image with one shared prefill vs the prompt repeated K times.

    .venv/bin/python bench/clip_rank.py                                  # CPU: the toy LLaVA, 2 images x 6 samples
    flock /work/heavy.lock .venv/bin/python bench/clip_rank.py --preset 7b-2l --before 646bac5
    python3 bench/clip_rank.py --device cuda --preset 7b                 # GPU: LLaVA-1.5-7B shape, bf16

CLIP-DPO samples K answers per image (hallucinate.py clip-rank, K = 6 in the recipe). Variants, on the same random
model and prompts (one image each, 576 image tokens at the 7B shapes), every answer sampled from its own generator
(model/generate.row_generators), so all of them must give the same tokens (checked; exit 1 if not):

    shared      generate(..., samples=K): each image and prompt prefilled once, its K rows share its cached keys
                and values (model/llama.py KVCache): B*(T + K*N) cached positions
    repeated    the prompt and image repeated K times, samples=1: what clip-rank did before (K vision-tower and
                prefill passes, B*K*(T + N) cached positions), on this code
    before      --before REV: the same repeated-prompt call on the `model/` package of commit REV (git archive),
                i.e. the code before the shared prefill, for an honest before/after of the whole path

Tokens/s counts generated tokens (B*K*N, every row runs N steps: min_new_tokens=N) over the wall time of the whole
call (vision tower, prefill, decode), best of --repeats after a short warm-up. Cache = the KV cache's bytes (the
KVCache.nbytes formula); on CUDA also the peak allocated memory of each call.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import Llava, LlavaConfig, TextConfig, VisionConfig  # noqa: E402
from model.generate import row_generators  # noqa: E402
from model.llama import KVCache  # noqa: E402


def config(preset: str) -> LlavaConfig:
    """7b: LLaVA-1.5-7B (ViT-L/14-336, Vicuna-7B). 7b-2l: the same widths and sequence lengths, 2 decoder layers and
    a 2-layer tower (a CPU-sized model whose per-layer work is the 7B's). toy: the toy world's tiny LLaVA."""
    if preset == "toy":
        from bench.train_step import toy_config
        return toy_config(None)
    layers = {"7b": (32, 24), "7b-2l": (2, 2)}[preset]
    vision = VisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers[1],
                          num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    text = TextConfig(vocab_size=32064, num_hidden_layers=layers[0], max_position_embeddings=4096, rms_norm_eps=1e-5,
                      pad_token_id=32001)
    # the tower keeps only the layers up to the feature layer (-2), so 2 layers = 1 run; 7b runs 23 of its 24
    return LlavaConfig(vision=vision, text=text, image_token_id=32000, pad_token_id=32001,
                       vision_feature_layer=-1 if preset == "7b-2l" else -2)


def prompts(cfg: LlavaConfig, n: int, text_len: int):
    """n left-padded prompts (BOS, the image tokens, text_len + 3 i random text tokens): ids, mask (n, T)."""
    g = torch.Generator().manual_seed(0)
    V = min(cfg.text.vocab_size, cfg.image_token_id)
    rows = [[cfg.text.bos_token_id] + [cfg.image_token_id] * cfg.num_image_tokens
            + torch.randint(3, V, (text_len + 3 * i,), generator=g).tolist() for i in range(n)]
    T = max(map(len, rows))
    pad = cfg.pad_token_id
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=g)


def load_before(rev: str):
    """The `model` package of commit `rev`, imported as `model_before` (its relative imports stay inside it)."""
    d = tempfile.mkdtemp(prefix="model_before_")
    tar = subprocess.run(["git", "-C", ROOT, "archive", rev, "model"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(tar)) as t:
        t.extractall(d, filter="data")
    spec = importlib.util.spec_from_file_location("model_before", os.path.join(d, "model", "__init__.py"),
                                                  submodule_search_locations=[os.path.join(d, "model")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["model_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default=None, help="toy | 7b-2l | 7b (default: toy on CPU, 7b on CUDA)")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--new", type=int, default=None, help="new tokens per answer (CPU 16, CUDA 128)")
    ap.add_argument("--text", type=int, default=40, help="text tokens per prompt besides the image")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--before", default=None, help="a commit whose model/ is timed too (needs git)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args(argv)
    cuda = a.device.startswith("cuda")
    a.preset = a.preset or ("7b" if cuda else "toy")
    a.new = a.new or (128 if cuda else 16)
    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = config(a.preset)
    torch.manual_seed(0)
    with torch.device(a.device):
        model = Llava(cfg).to(dtype).eval()
    ids, mask, px = prompts(cfg, a.images, a.text)
    ids, mask, px = ids.to(a.device), mask.to(a.device), px.to(a.device, dtype)
    B, T, K, N = a.images, ids.shape[1], a.samples, a.new
    rep = torch.arange(B, device=a.device).repeat_interleave(K)
    keys = [f"{i}#{k}" for i in range(B) for k in range(K)]
    kw = dict(temperature=1.0, top_p=0.9)
    variants = {"shared": lambda n: model.generate(ids, px, mask, samples=K, max_new_tokens=n, min_new_tokens=n,
                                                   generator=row_generators(0, keys), **kw),
                "repeated": lambda n: model.generate(ids[rep], px[rep], mask[rep], max_new_tokens=n, min_new_tokens=n,
                                                     generator=row_generators(0, keys), **kw)}
    c = cfg.text
    cache = {"shared": KVCache.nbytes(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, dtype, B, T, K, N),
             "repeated": KVCache.nbytes(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, dtype, B * K, T, 1, N)}
    if a.before:
        old = load_before(a.before)
        with torch.device(a.device):
            before = old.Llava(old.LlavaConfig.from_dict(cfg.to_dict())).to(dtype).eval()
        before.load_state_dict(model.state_dict())
        variants["before"] = lambda n: before.generate(ids[rep], px[rep], mask[rep], max_new_tokens=n,
                                                       min_new_tokens=n, generator=old.generate.row_generators(0, keys),
                                                       **kw)
        cache["before"] = cache["repeated"]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows, outs = [], {}
    for name, fn in variants.items():
        fn(2)  # warm-up: kernels chosen, allocator primed
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        best = float("inf")
        for _ in range(a.repeats):
            sync()
            t0 = time.perf_counter()
            outs[name] = fn(N).cpu()
            sync()
            best = min(best, time.perf_counter() - t0)
        rows.append({"variant": name, "s": best, "tokens_per_s": B * K * N / best, "cache_mb": cache[name] / 2 ** 20,
                     "peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None})
    same = all(torch.equal(o, outs["shared"]) for o in outs.values())
    base = next(r for r in rows if r["variant"] == ("before" if a.before else "repeated"))
    print(f"clip-rank generation: {a.preset} ({c.num_hidden_layers} layers, width {c.hidden_size}), {B} images x "
          f"{K} samples, prompt {T} tokens, {N} new, {a.device}"
          f"{'' if cuda else ', %d thread(s)' % a.threads}; same tokens in every variant: {'yes' if same else 'NO'}")
    print("| variant | s | tokens/s | KV cache MiB | speed vs " + base["variant"] + " |" + (" peak MiB |" if cuda else ""))
    print("|---|---|---|---|---|" + ("---|" if cuda else ""))
    for r in rows:
        print(f"| {r['variant']} | {r['s']:.2f} | {r['tokens_per_s']:.1f} | {r['cache_mb']:.0f} | "
              f"{base['s'] / r['s']:.2f}x |" + (f" {r['peak_mb']:.0f} |" if cuda else ""))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
