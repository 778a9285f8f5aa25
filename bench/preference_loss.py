"""The whole preference loss, forward + backward, side by side: dpo_fused.py vs naive vs sequence_logprobs + loss.

    .venv/bin/python bench/preference_loss.py                   # CPU: 8 pairs x 256 scored rows = N 4096, D 1024,
                                                                # V 32000, fp32, sigmoid DPO
    .venv/bin/python bench/preference_loss.py --device cuda     # GPU: 16 pairs x 256 = N 8192, D 4096, V 32000, bf16;
                                                                # adds torch.compile(naive) and the bare GEMMs
    .venv/bin/python bench/preference_loss.py --check           # + the three losses' values and gradients compared

The loss is sigmoid DPO summed over P pairs of (chosen, rejected), each sequence L scored rows (what `dpo_fused.pack`
leaves of a batch: image and prompt rows never reach the head), the reference log-probs fixed. Variants, each with a
trainable LM head and with a frozen one (LoRA: no dW), each in a fresh subprocess so its peak memory is its own:

    naive         logits = h @ W^T (torch.mm: MKL on CPU), fp32 log_softmax, gather, per-sequence sums, dpo_loss
    naive_onednn  (CPU) the same with the GEMMs of model/logprob.py (oneDNN): the GEMM library's share of any gap
    unfused       model/logprob.py's sequence_logprobs (torch path on CPU, Triton on CUDA) + sums + dpo_loss: today's
    fused         dpo_fused.fused_preference_loss (torch path on CPU, Triton row kernels on CUDA): ours
    compile       (CUDA) torch.compile of naive's whole loss
    gemm_floor    (CUDA) the bare GEMMs on real data: logits, dH, and dW when trainable (the floor for anything exact)

"extra" = peak memory beyond what the inputs hold, minus the two gradients dH and dW themselves; peak = peak RSS
(VmHWM, reset after set-up) on CPU, torch.cuda.max_memory_allocated on CUDA. Time = median of --repeats after one
warm-up; CPU s = the process's CPU time (user + system, all threads) for the same steps, a steadier measure than
wall time on a shared machine. Ratios: against naive (and unfused) with the same head.
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
import dpo_fused  # noqa: E402
from bench.logprob import _GemmFloor, _NaiveOneDNN  # noqa: E402
from bench.memory import reset_peak_rss, rss_mb  # noqa: E402
from dpo import dpo_loss  # noqa: E402
from model.logprob import sequence_logprobs  # noqa: E402

CPU_METHODS = ["naive", "naive_onednn", "unfused", "fused"]
CUDA_METHODS = ["naive", "compile", "unfused", "fused", "gemm_floor"]


def inputs(a, trainable):
    dev, dtype = a.device, {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    g = torch.Generator().manual_seed(0)
    N = 2 * a.pairs * a.rows
    h = torch.randn(N, a.D, generator=g).to(dev, dtype).requires_grad_()
    w = (torch.randn(a.V, a.D, generator=g) * 0.02).to(dev, dtype).requires_grad_(trainable)
    t = torch.randint(0, a.V, (N,), generator=g).to(dev)
    seq = (torch.arange(N) // a.rows).to(dev)  # (N,) rows of sequence s are s L .. (s + 1) L - 1
    groups = dpo_fused.pair_groups(a.pairs, dev)  # (P, 2): chosen s, rejected P + s
    # reference log-probs a few nats around the policy's (uniform-ish over V at this init): margins of both signs
    ref = (-a.rows * torch.log(torch.tensor(float(a.V))) + 3 * torch.randn(2 * a.pairs, generator=g)).to(dev)
    return h, w, t, seq, groups, ref


def _loss_from_logps(lp, seq, groups, ref, S):
    pi = torch.zeros(S, dtype=torch.float32, device=lp.device).index_add(0, seq, lp.float())  # (S,)
    losses, _, _ = dpo_loss(pi[groups[:, 0]], pi[groups[:, 1]], ref[groups[:, 0]], ref[groups[:, 1]], 0.1)
    return losses.sum()


def naive_loss(h, w, t, seq, groups, ref):
    lp = torch.log_softmax((h @ w.t()).float(), dim=-1).gather(1, t[:, None])[:, 0]  # (N,) via (N, V) logits
    return _loss_from_logps(lp, seq, groups, ref, ref.shape[0])


def method(name, a):
    S = 2 * a.pairs
    if name == "naive":
        return naive_loss
    if name == "compile":
        return torch.compile(naive_loss)
    if name == "naive_onednn":
        return lambda h, w, t, seq, groups, ref: _loss_from_logps(_NaiveOneDNN.apply(h, w, t), seq, groups, ref, S)
    if name == "unfused":
        return lambda h, w, t, seq, groups, ref: _loss_from_logps(sequence_logprobs(h, w, t), seq, groups, ref, S)
    if name == "fused":
        def fn(pi, ref, n):  # sigmoid DPO of each (chosen, rejected) group, beta 0.1
            return dpo_loss(pi[:, 0], pi[:, 1], ref[:, 0], ref[:, 1], 0.1)[0]
        budget = a.budget_mb and int(a.budget_mb * 2 ** 20)
        return lambda h, w, t, seq, groups, ref: dpo_fused.fused_preference_loss(h, w, t, seq, groups, ref, fn,
                                                                                 budget_bytes=budget)[0]
    if name == "gemm_floor":
        return lambda h, w, t, seq, groups, ref: _GemmFloor.apply(h, w).sum()
    raise ValueError(name)


def run_one(name, a):
    dev = a.device
    h, w, t, seq, groups, ref = inputs(a, trainable=not name.endswith("_frozen"))
    fn = method(name.removesuffix("_frozen"), a)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():
        h.grad = w.grad = None  # autograd then stores each gradient as .grad (no accumulation copy)
        fn(h, w, t, seq, groups, ref).backward()
        sync()

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_mb()
        reset_peak_rss()
    step()  # warm-up (and compile)
    times, cpu = [], []
    for _ in range(a.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    grads = sum(x.grad.numel() * x.grad.element_size() for x in (h, w) if x.grad is not None) / 2 ** 20
    if dev == "cuda":
        extra = torch.cuda.max_memory_allocated() / 2 ** 20 - base / 2 ** 20 - grads
    else:
        extra = rss_mb("VmHWM") - base - grads
    return {"variant": name, "time_s": statistics.median(times), "cpu_s": statistics.median(cpu), "extra_mb": extra}


def check(a):
    """Loss and gradients of unfused and fused against naive on the benchmark's inputs (max abs differences)."""
    print(f"\nmax |difference| vs naive (N={2 * a.pairs * a.rows} D={a.D} V={a.V} {a.dtype}):")
    print("| method | loss | dH | dW |\n|---|---|---|---|")
    h, w, t, seq, groups, ref = inputs(a, trainable=True)
    out = {}
    for name in ("naive", "unfused", "fused"):
        h.grad = w.grad = None
        loss = method(name, a)(h, w, t, seq, groups, ref)
        loss.backward()
        out[name] = (loss.detach().float(), h.grad.float(), w.grad.float())
    for name in ("unfused", "fused"):
        print(f"| {name} | " + " | ".join(f"{(x - y).abs().max().item():.1e}" for x, y in zip(out[name], out["naive"]))
              + " |")
    print(f"(loss {out['naive'][0].item():.6f}; |dH| max {out['naive'][1].abs().max().item():.2e}, "
          f"|dW| max {out['naive'][2].abs().max().item():.2e})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pairs", type=int, help="pairs (CPU 8, CUDA 16)")
    ap.add_argument("--rows", type=int, default=256, help="scored rows per sequence")
    ap.add_argument("--D", type=int)
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument("--dtype")
    ap.add_argument("--budget_mb", type=float, default=0, help="fused: logits workspace per chunk (0 = its default)")
    ap.add_argument("--repeats", type=int, help="default 3 on CPU, 20 on CUDA")
    ap.add_argument("--variants", help="comma-separated (default: all for the device, both heads)")
    ap.add_argument("--check", action="store_true", help="also compare the losses' values and gradients")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cuda = a.device == "cuda"
    a.pairs = a.pairs or (16 if cuda else 8)
    a.D = a.D or (4096 if cuda else 1024)
    a.repeats = a.repeats or (20 if cuda else 3)
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    if a.one:
        print(json.dumps(run_one(a.one, a)))
        return
    if a.check:
        check(a)
    methods = CUDA_METHODS if cuda else CPU_METHODS
    names = a.variants.split(",") if a.variants else methods + [m + "_frozen" for m in methods]
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--device", a.device, "--pairs", str(a.pairs), "--rows",
               str(a.rows), "--D", str(a.D), "--V", str(a.V), "--dtype", a.dtype, "--repeats", str(a.repeats),
               "--budget_mb", str(a.budget_mb)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name}: skipped ({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'failed'})")
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    by = {r["variant"]: r for r in rows}
    N = 2 * a.pairs * a.rows
    print(f"\nsigmoid DPO, {a.pairs} pairs x {a.rows} scored rows = N {N}, D={a.D} V={a.V} {a.dtype} on {a.device} "
          f"({torch.get_num_threads()} threads), median of {a.repeats}; load average {os.getloadavg()[0]:.2f}")
    print("| variant | fwd+bwd ms | vs naive | vs unfused | CPU s | vs naive | extra MiB | vs naive |"
          + (" vs compile | vs GEMM floor |" if cuda else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if cuda else ""))
    for r in rows:
        suffix = "_frozen" if r["variant"].endswith("_frozen") else ""
        ref = {k: by.get(k + suffix) for k in ("naive", "unfused", "compile", "gemm_floor")}
        line = (f"| {r['variant']} | {r['time_s'] * 1e3:.1f} | {_ratio(r, ref['naive'], 'time_s')} | "
                f"{_ratio(r, ref['unfused'], 'time_s')} | {r['cpu_s']:.2f} | {_ratio(r, ref['naive'], 'cpu_s')} | "
                f"{r['extra_mb']:.0f} | "
                f"{_ratio(r, ref['naive'], 'extra_mb', 3)} |")
        if cuda:
            line += f" {_ratio(r, ref['compile'], 'time_s')} | {_ratio(r, ref['gemm_floor'], 'time_s')} |"
        print(line)


def _ratio(r, ref, key, digits=2):
    return f"{r[key] / ref[key]:.{digits}f}x" if ref and ref[key] else "-"


if __name__ == "__main__":
    main()
