"""Forward+backward time and peak memory of per-token log-probs: naive log_softmax+gather vs model/logprob.py.

    .venv/bin/python bench/logprob.py                  # CPU: N=4096, D=1024, V=32000, fp32
    .venv/bin/python bench/logprob.py --device cuda    # GPU: N=8192, D=4096, V=32000, bf16; adds the Triton kernel,
                                                       # torch.compile(naive), Liger FLCE (if importable), bare GEMMs

Columns: naive (full logits, trainable head), chunked (ours, trainable head), and the frozen-head (LoRA) case of
both. Each variant runs in a fresh subprocess so its peak memory is its own: "extra" = peak minus the memory held
once the inputs exist, minus the gradients dH and dW themselves (the issue's "beyond the gradients"); peak = the
peak RSS (ru_maxrss) on CPU, torch.cuda.max_memory_allocated on CUDA. Time = median of --repeats after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.memory import reset_peak_rss, rss_mb  # noqa: E402
from model.logprob import naive_logprobs, sequence_logprobs  # noqa: E402

VARIANTS = ["naive", "chunked", "naive_frozen", "chunked_frozen", "triton", "compile", "liger", "gemm_floor"]


def run_one(name, a):
    dev, dtype = a.device, {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(a.N, a.D, generator=g).to(dev, dtype).requires_grad_()
    w = (torch.randn(a.V, a.D, generator=g) * 0.02).to(dev, dtype).requires_grad_(not name.endswith("frozen"))
    t = torch.randint(0, a.V, (a.N,), generator=g).to(dev)
    up = torch.randn(a.N, generator=g).to(dev)
    if name in ("naive", "naive_frozen"):
        fn = naive_logprobs
    elif name in ("chunked", "chunked_frozen"):
        fn = sequence_logprobs
    elif name == "triton":
        from model.logprob_triton import triton_sequence_logprobs as fn
    elif name == "compile":
        fn = torch.compile(naive_logprobs)
    elif name == "liger":
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
        def fn(h_, w_, t_):  # per-token NLL with reduction="none"
            return -LigerFusedLinearCrossEntropyFunction.apply(h_, w_, t_, None, None, -100, 0.0, 0.0, "none")[0]
    elif name == "gemm_floor":  # the bare GEMMs a trainable head needs: logits, dH, dW
        def fn(h_, w_, t_):
            return _GemmFloor.apply(h_, w_)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():
        h.grad = w.grad = None  # autograd then stores each gradient as .grad (no accumulation copy)
        out = fn(h, w, t)
        (out.float() * up).sum().backward()
        sync()

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_mb()
        reset_peak_rss()
    step()  # warm-up (and compile)
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    grads = sum(x.grad.numel() * x.grad.element_size() for x in (h, w) if x.grad is not None) / 2 ** 20
    if dev == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 - base / 2 ** 20 - grads
    else:
        peak = rss_mb("VmHWM") - base - grads
    return {"variant": name, "time_s": statistics.median(times), "extra_mb": peak}


class _GemmFloor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w):
        ctx.save_for_backward(h, w)
        return (h @ w.t())[:, 0].float()  # the (N, V) GEMM; returns one column so nothing else is timed

    @staticmethod
    def backward(ctx, g):
        h, w = ctx.saved_tensors
        z = torch.empty(h.shape[0], w.shape[0], dtype=h.dtype, device=h.device)
        return z @ w, z.t() @ h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--N", type=int)
    ap.add_argument("--D", type=int)
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument("--dtype")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cuda = a.device == "cuda"
    a.N = a.N or (8192 if cuda else 4096)
    a.D = a.D or (4096 if cuda else 1024)
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    if a.one:
        print(json.dumps(run_one(a.one, a)))
        return
    names = VARIANTS if cuda else VARIANTS[:4]
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--device", a.device, "--N", str(a.N), "--D", str(a.D),
               "--V", str(a.V), "--dtype", a.dtype, "--repeats", str(a.repeats)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name}: skipped ({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'failed'})")
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    by = {r["variant"]: r for r in rows}
    print(f"\nN={a.N} D={a.D} V={a.V} {a.dtype} on {a.device} ({torch.get_num_threads()} threads), "
          f"median of {a.repeats}")
    print("| variant | fwd+bwd s | vs naive | extra MiB | vs naive |" + (" vs GEMM floor |" if cuda else ""))
    print("|---|---|---|---|---|" + ("---|" if cuda else ""))
    for r in rows:
        ref = by["naive_frozen" if r["variant"].endswith("frozen") else "naive"]
        line = (f"| {r['variant']} | {r['time_s']:.3f} | {r['time_s'] / ref['time_s']:.2f}x | {r['extra_mb']:.0f} | "
                f"{r['extra_mb'] / max(ref['extra_mb'], 1e-9):.3f}x |")
        if cuda and "gemm_floor" in by:
            line += f" {r['time_s'] / by['gemm_floor']['time_s']:.2f}x |"
        print(line)


if __name__ == "__main__":
    main()
