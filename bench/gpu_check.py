"""Every check that needs a GPU, in one call, with one JSON of results: run it whenever a GPU machine is lent.

    python3 bench/gpu_check.py --out $OUT            # on the GPU machine, from the repo root (its python3 has torch)

The machine has PyTorch, Triton, transformers and scikit-image but no network, so the rehearsal's tokenizer assets
(.venv/assets/, built here by `make test`) travel with the working tree (the device tool's `carry`). In order,
each with its own time limit so one slow part cannot starve the rest (the device budget is 15 minutes in all):

  tests      the CUDA paths of the kernel, the fused loss and the model: compiled Triton kernels on GPU tensors
  syncs      python -m bench.syncs: CUDA's own count (set_sync_debug_mode) of the host syncs in each training step
             and each settle() of train.py's loop, DPO and POVID (goal: 0 per step, issue 32 item 9)
  loop       bench/train_step.py --loop --preset 7b: train.py's own loop at LLaVA-1.5-7B's shape, LoRA r128, 1 pair
             per step, DPO and POVID: step time, peak memory, MFU (goal for POVID: >= 40% on an H100), and the step
             with its batches made on the training thread ("data inline": the Prefetch thread's share)
  clip_rank  bench/clip_rank.py --device cuda: clip-rank's generation at the 7B shape, 6 samples sharing one
             prefill vs the prompt repeated 6 times (tokens/s, KV cache, peak memory; the same tokens checked)
  rehearsal  python -m rehearsal.run at real widths (1-2 layers): the README's real recipe in bf16 on CUDA,
             torchrun with one process (DDP; FSDP2 pass too)
  step       bench/train_step.py --device cuda: the 7B-shape LoRA DPO step (step time, peak memory, MFU)
  logprob    bench/logprob.py --device cuda: sequence log-probs vs naive / torch.compile / the bare GEMMs
  fused      bench/preference_loss.py --device cuda: the fused preference loss vs naive / torch.compile / GEMMs

Writes OUT/gpu_check.json (rewritten after every part, so a killed call keeps what finished) and OUT/<part>.log.

The parts share one budget (--budget, 540 s by default: the device tool runs one command for at most 600 s, and a
session has 15 minutes of device time, the machine's start included): each part gets its own limit or what is left
of the budget, whichever is less, and a part that would get under MIN_PART seconds is not started but recorded as
"skipped" with the reason, so gpu_check.json says what was not run. The device call, then a second one for what the
first skipped if device time is left (the machine stays warm only 30 s, so at once; about 90 s of start + 570 +
230 s fits the 15 minutes):

    run(command="python3 bench/gpu_check.py --out $OUT", carry=[".venv/assets"], timeout_s=570)
    run(command="python3 bench/gpu_check.py --out $OUT --only rehearsal --budget 200", carry=[".venv/assets"],
        timeout_s=230)

The first call's 540 s hold tests, syncs, loop and clip_rank (issue 32's GPU-efficiency rows) when each takes its
limit; what it skips (rehearsal, step, logprob, fused) is recorded, for a second call or the next session.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
sys.path.insert(0, ROOT)
from model.files import write_atomic  # noqa: E402

PARTS = [  # (name, command, seconds)
    ("tests", [PY, "-m", "pytest", "-q", "-x", "tests/test_logprob.py", "tests/test_dpo.py", "tests/test_dpo_fused.py",
               "tests/test_model_parity.py", "tests/test_model_generate.py"], 150),
    ("syncs", [PY, "-m", "bench.syncs", "--device", "cuda"], 60),
    ("loop", [PY, "bench/train_step.py", "--loop", "--device", "cuda", "--preset", "7b", "--pairs", "1",
              "--repeats", "5"], 240),
    ("clip_rank", [PY, "bench/clip_rank.py", "--device", "cuda"], 90),
    ("rehearsal", [PY, "-m", "rehearsal.run", "--out", "/tmp/gpu_rehearsal", "--ngpu", "1"], 270),
    ("step", [PY, "bench/train_step.py", "--device", "cuda"], 120),
    ("logprob", [PY, "bench/logprob.py", "--device", "cuda"], 90),
    ("fused", [PY, "bench/preference_loss.py", "--device", "cuda"], 90),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out/gpu_check"))
    p.add_argument("--only", default="", help="comma-separated part names (default: all)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for all parts together")
    a = p.parse_args(argv)
    only = set(filter(None, a.only.split(",")))
    unknown = only - {name for name, _, _ in PARTS}
    if unknown:
        p.error(f"--only: no part named {', '.join(sorted(unknown))} (parts: {', '.join(n for n, _, _ in PARTS)})")
    import torch
    res = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "torch": torch.__version__, "budget_s": a.budget, "parts": {}}
    try:
        import triton
        res["triton"] = triton.__version__
    except ImportError:
        res["triton"] = None
    run_parts([x for x in PARTS if not only or x[0] in only], a.out, a.budget, res)
    return 0


MIN_PART = 20.0  # seconds: less than this left of the budget, and a part is recorded as skipped, not started


def run_parts(parts, out: str, budget: float, res: dict) -> dict:
    """Run each (name, cmd, limit) in order, within min(limit, what is left of `budget`) seconds; record rc ("timeout"
    when killed at its limit, "skipped" when the budget had too little left to start it), wall time and the log's
    tail in res["parts"], rewriting OUT/gpu_check.json after each part."""
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # the compiled kernels, not the interpreter
    start = time.time()
    for name, cmd, limit in parts:
        left = budget - (time.time() - start)
        if left < MIN_PART:
            res["parts"][name] = {"cmd": " ".join(cmd), "rc": "skipped",
                                  "why": f"{max(left, 0):.0f} s of the {budget:.0f} s budget left (--only {name} "
                                         "in a second call)"}
            write_atomic(os.path.join(out, "gpu_check.json"), json.dumps(res, indent=1))
            print(f"{name}: skipped ({max(left, 0):.0f} s of the budget left)", flush=True)
            continue
        log = os.path.join(out, f"{name}.log")
        t0 = time.time()
        with open(log, "w") as f:
            try:
                rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=min(limit, left)).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        with open(log) as f:
            tail = f.read()[-3000:]
        res["parts"][name] = {"cmd": " ".join(cmd), "rc": rc, "limit_s": round(min(limit, left), 1),
                              "wall_s": round(time.time() - t0, 1), "tail": tail}
        if name == "rehearsal" and os.path.isfile("/tmp/gpu_rehearsal/rehearsal.json"):
            with open("/tmp/gpu_rehearsal/rehearsal.json") as f:
                res["parts"][name]["report"] = json.load(f)
        write_atomic(os.path.join(out, "gpu_check.json"), json.dumps(res, indent=1))
        print(f"{name}: rc {rc} in {res['parts'][name]['wall_s']} s", flush=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
