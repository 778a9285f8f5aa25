"""Forward+backward time and peak memory of per-token log-probs: naive log_softmax+gather vs model/logprob.py.

    .venv/bin/python bench/logprob.py                  # CPU: N=4096, D=1024, V=32000, fp32
    .venv/bin/python bench/logprob.py --device cuda    # GPU: N=8192, D=4096, V=32000, bf16; adds the Triton kernels,
                                                       # torch.compile(naive), Liger FLCE (if importable), bare GEMMs
    python bench/logprob.py [--device cuda] --check   # + errors vs an fp32 (bf16 inputs) or fp64 (fp32) reference
    python bench/logprob.py --device cuda --sweep      # + the Triton path's alternatives (tiles, plans), timed
    python bench/logprob.py --device cuda --profile    # + its CUDA kernel times (torch.profiler)

Rows: each method with a trainable LM head and with a frozen one (LoRA: no dW). naive = full logits; chunked = the
torch path of model/logprob.py (vocabulary blocks; on CPU its GEMMs run in oneDNN, naive's in MKL); naive_onednn
(CPU) = naive with the torch path's GEMMs, to tell the GEMM library's share from the algorithm's; triton = its CUDA
path (triton_ptr: the fused forward with pointer loads instead of TMA descriptors); gemm_floor = only the bare GEMMs
the head needs (logits, dH, and dW when trainable), on real data: the physical floor for anything exact. Each variant
runs in a fresh subprocess so its peak memory is its own: "extra" = peak minus the memory held once the inputs exist,
minus the gradients dH and dW themselves (the issue's "beyond the gradients"); peak = the peak RSS (VmHWM, reset
after set-up) on CPU, torch.cuda.max_memory_allocated on CUDA. Time = median of --repeats after one warm-up.
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
from model.logprob import _linear, naive_logprobs, sequence_logprobs  # noqa: E402

METHODS = ["naive", "chunked", "triton", "triton_ptr", "compile", "liger", "gemm_floor"]
CPU_METHODS = ["naive", "naive_onednn", "chunked"]


def _inputs(a, trainable):
    dev, dtype = a.device, {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(a.N, a.D, generator=g).to(dev, dtype).requires_grad_()
    w = (torch.randn(a.V, a.D, generator=g) * 0.02).to(dev, dtype).requires_grad_(trainable)
    t = torch.randint(0, a.V, (a.N,), generator=g).to(dev)
    up = torch.randn(a.N, generator=g).to(dev)  # non-uniform upstream gradient, as DPO's per-sequence weights are
    return h, w, t, up


def _method(name):
    if name == "naive":
        return naive_logprobs
    if name == "chunked":
        return lambda h_, w_, t_: sequence_logprobs(h_, w_, t_, use_triton=False)
    if name in ("triton", "triton_ptr"):  # the fused forward loading through TMA descriptors / plain pointers
        from model import logprob_triton
        logprob_triton.FORWARD = "tile" if name == "triton_ptr" else "tma"
        return lambda h_, w_, t_: sequence_logprobs(h_, w_, t_, use_triton=True)
    if name == "compile":
        return torch.compile(naive_logprobs)
    if name == "liger":
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

        def liger(h_, w_, t_):  # per-token NLL with reduction="none" (recomputes in backward, like ours)
            return -LigerFusedLinearCrossEntropyFunction.apply(h_, w_, t_, None, None, -100, 0.0, 0.0, "none")[0]
        return liger
    if name == "gemm_floor":
        return lambda h_, w_, t_: _GemmFloor.apply(h_, w_)
    if name == "naive_onednn":
        return lambda h_, w_, t_: _NaiveOneDNN.apply(h_, w_, t_)
    raise ValueError(name)


def run_one(name, a):
    dev = a.device
    h, w, t, up = _inputs(a, trainable=not name.endswith("_frozen"))
    fn = _method(name.removesuffix("_frozen"))
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
    """The GEMMs alone: z = h W^T forward; backward z W (dH) and, for a trainable head, z^T h (dW), with the saved
    logits standing in for their gradient (same shape, real values, so the timing is that of real data)."""

    @staticmethod
    def forward(ctx, h, w):
        z = h @ w.t()  # (N, V)
        ctx.save_for_backward(h, w, z)
        return z[:, 0].float()  # one column, so nothing but the GEMM is timed

    @staticmethod
    def backward(ctx, g):
        h, w, z = ctx.saved_tensors
        return z @ w, (z.t() @ h if ctx.needs_input_grad[1] else None)


class _NaiveOneDNN(torch.autograd.Function):
    """The naive computation (full fp32 logits, log-softmax saved for backward) with the GEMMs of the torch path
    (model/logprob.py's _linear: oneDNN on CPU): what is left of the torch path's lead once both use the same GEMM
    library is the algorithm's."""

    @staticmethod
    def forward(ctx, h, w, t):
        logp = torch.log_softmax(_linear(h, w), dim=-1)  # (N, V)
        ctx.save_for_backward(h, w, t, logp)
        return logp.gather(1, t[:, None])[:, 0]

    @staticmethod
    def backward(ctx, g):
        h, w, t, logp = ctx.saved_tensors
        dz = logp.exp_().mul_(-g[:, None])  # -g * softmax, in the saved block (autograd would allocate another)
        dz[torch.arange(len(t)), t] += g
        return _linear(dz, w.t()), (_linear(dz.t(), h.t()) if ctx.needs_input_grad[1] else None), None


def check(a):
    """Relative error (||x - ref|| / ||ref||) of log p, dH and dW of each method vs the naive computation on upcasts
    of the same inputs (fp32 for 16-bit inputs, fp64 for fp32 ones), at the benchmark's shape (fresh inputs per
    method)."""
    ref_dtype = torch.float64 if a.dtype == "float32" else torch.float32
    print(f"\nrelative error vs {ref_dtype} reference (N={a.N} D={a.D} V={a.V} {a.dtype}):")
    print("| method | log p | dH | dW |\n|---|---|---|---|")
    names = ("naive", "chunked", "triton", "triton_ptr") if a.device == "cuda" else ("naive", "chunked")
    for name in names + (("liger",) if a.device == "cuda" and _importable("liger_kernel") else ()):
        h, w, t, up = _inputs(a, trainable=True)
        fn = _method(name)
        out = fn(h, w, t)
        (out.float() * up).sum().backward()
        hr, wr = (x.detach().to(ref_dtype).requires_grad_() for x in (h, w))
        ref = torch.log_softmax(hr @ wr.t(), dim=-1).gather(1, t[:, None])[:, 0]  # in ref_dtype throughout
        (ref * up.to(ref_dtype)).sum().backward()
        errs = [(x.to(ref_dtype) - y).norm().item() / y.norm().item()
                for x, y in ((out.detach(), ref.detach()), (h.grad, hr.grad), (w.grad, wr.grad))]
        print(f"| {name} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
        del h, w, out, ref, hr, wr
        if a.device == "cuda":
            torch.cuda.empty_cache()


def _timed(fn, h, w, t, up, repeats):
    """Median forward and backward milliseconds (CUDA), after one warm-up."""
    fwd, bwd = [], []
    for i in range(repeats + 1):
        h.grad = w.grad = None
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(h, w, t)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        (out * up).sum().backward()
        torch.cuda.synchronize()
        if i:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((time.perf_counter() - t1) * 1e3)
    return statistics.median(fwd), statistics.median(bwd)


def sweep(a):
    """Forward and backward time of the Triton path's alternatives: tile configurations (BLOCK_M, BLOCK_V, BLOCK_D,
    GROUP_M, warps, stages) of the fused forward, its row-chunked cuBLAS alternative, and workspace sizes."""
    from model import logprob_triton as lt
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    default_forward, default_cfg = lt.FORWARD, lt.CONFIGS[dtype]
    fn = _method("triton")
    best = (128, 256, 64, 8, 8, 3)
    runs = [  # (trainable head, forward kernel, tile config, workspace as a multiple of hidden's size)
        (True, "tile", best, 2), (True, "tile", (128, 256, 64, 16, 8, 3), 2), (True, "rows", best, 2),
        (True, "tma", best, 2), (True, "tma", (128, 256, 64, 16, 8, 3), 2), (True, "tma", (128, 256, 64, 8, 8, 4), 2),
        (True, "tma", (256, 128, 64, 8, 8, 3), 2), (True, "tma", (128, 128, 64, 8, 4, 4), 2),
        (True, "tma", (128, 256, 64, 8, 8, 3), 4), (False, "-", best, 2)]
    default_ws = lt.WORKSPACE
    print(f"\nTriton path alternatives, median of {a.repeats} (forward / backward / total ms):")
    for trainable, fwd_plan, cfg, ws in runs:
        lt.CONFIGS[dtype] = cfg
        lt.FORWARD = fwd_plan if trainable else "tile"
        lt.WORKSPACE = ws
        h, w, t, up = _inputs(a, trainable=trainable)
        label = (f"trainable head, forward {fwd_plan}, tiles {cfg}" if trainable else "frozen head") + \
            f", workspace {ws} x hidden"
        try:
            f, b = _timed(fn, h, w, t, up, a.repeats)
            print(f"  {label}: {f:.2f} / {b:.2f} / {f + b:.2f}")
        except Exception as e:  # a configuration that does not fit (shared memory, registers) is reported
            print(f"  {label}: failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        del h, w, t, up
    lt.WORKSPACE = default_ws
    lt.FORWARD = default_forward
    lt.CONFIGS[dtype] = default_cfg


def profile(a):
    """CUDA and CPU times of one forward+backward of the Triton path (torch.profiler), trainable and frozen head."""
    from torch.profiler import ProfilerActivity, profile as prof
    fn = _method("triton")
    for trainable in (True, False):
        h, w, t, up = _inputs(a, trainable=trainable)
        _timed(fn, h, w, t, up, 1)  # warm-up and compile
        with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            (fn(h, w, t) * up).sum().backward()
            torch.cuda.synchronize()
        print(f"trainable head: {trainable}")
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=50))
        print(p.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=50))


def _importable(mod):
    try:
        __import__(mod)
    except ImportError:
        return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--N", type=int)
    ap.add_argument("--D", type=int)
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument("--dtype")
    ap.add_argument("--repeats", type=int, help="default 3 on CPU, 20 on CUDA")
    ap.add_argument("--check", action="store_true",
                    help="also print relative errors vs an upcast reference (fp32 for 16-bit inputs, fp64 for fp32)")
    ap.add_argument("--sweep", action="store_true", help="also time the Triton kernels' tile configurations")
    ap.add_argument("--profile", action="store_true", help="also print the Triton path's CUDA kernel times")
    ap.add_argument("--no-table", action="store_true", help="only --check / --sweep")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cuda = a.device == "cuda"
    a.N = a.N or (8192 if cuda else 4096)
    a.D = a.D or (4096 if cuda else 1024)
    a.repeats = a.repeats or (20 if cuda else 3)
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    if a.one:
        print(json.dumps(run_one(a.one, a)))
        return
    if a.check:
        check(a)
    if a.sweep:
        sweep(a)
    if a.profile:
        profile(a)
    if a.no_table:
        return
    methods = METHODS if cuda else CPU_METHODS
    names = methods + [m + "_frozen" for m in methods if m != "triton_ptr"]  # a frozen head never runs the tile kernel
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
    print("| variant | fwd+bwd ms | vs naive | extra MiB | vs naive |" + (" vs GEMM floor |" if cuda else ""))
    print("|---|---|---|---|---|" + ("---|" if cuda else ""))
    for r in rows:
        suffix = "_frozen" if r["variant"].endswith("_frozen") else ""
        ref = by.get("naive" + suffix)
        line = (f"| {r['variant']} | {r['time_s'] * 1e3:.1f} | {_ratio(r['time_s'], ref and ref['time_s'])} | "
                f"{r['extra_mb']:.0f} | {_ratio(r['extra_mb'], ref and ref['extra_mb'], 3)} |")
        if cuda:
            floor = by.get("gemm_floor" + suffix)
            line += f" {_ratio(r['time_s'], floor and floor['time_s'])} |"
        print(line)


def _ratio(x, ref, digits=2):
    return f"{x / ref:.{digits}f}x" if ref else "-"


if __name__ == "__main__":
    main()
