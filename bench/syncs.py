"""Host syncs: the calls that make the host wait for the GPU, counted on the CPU or on CUDA.

A training step that never waits for the GPU lets the host queue the next kernels while the GPU runs the last ones;
each sync drains that queue (and, on a multi-GPU step, exposes every rank's launch latency). On CUDA the count is
CUDA's own: torch.cuda.set_sync_debug_mode("warn") warns at each synchronizing call. On the CPU nothing waits, so
`SyncCounter` counts, on the thread that enters it (dispatch modes are thread-local: a data thread is not seen),
every call that would wait if its tensors lived on a GPU:

    a device value read by the host   item(), bool(t), int(t), float(t) (aten._local_scalar_dense), tolist(),
                                      cpu(), numpy()
    a data-dependent output size      nonzero, torch.where(cond), masked_select, boolean-mask indexing and
                                      assignment, unique, repeat_interleave without output_size
    a blocking copy                   .to(device) / .cuda() without non_blocking=True, torch.tensor(..., device=)
                                      (a host list copied to the device from pageable memory)

Copies that torch's own functions make (clip_grad_norm_ moving device tensors to their device) are left to them. It
over-counts where a tensor would have stayed on the host (a CPU-side count on the training thread is counted too;
move it to the data thread; foreach AdamW reads its step counters, host tensors on CUDA: use fused=True, which
does not) and cannot see pinned memory (a CPU-only torch cannot pin): a non_blocking copy is not counted here,
while CUDA counts one from unpinned memory. The GPU run (bench/gpu_check.py) has the real number.

    with SyncCounter() as c:
        run.step(3)
    print(c.count, c.calls)       # calls: "aten.nonzero.default at train.py:341", ...
"""
from __future__ import annotations

import sys
import traceback
import warnings

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SIZE_FROM_DATA = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
                  aten.unique_consecutive.default, aten.unique_dim.default, aten.repeat_interleave.Tensor}
HOST_READS = {torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy}


def _where() -> str:
    """file:line of the innermost frame outside torch and this file: the project's line that asked for the sync."""
    for f in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in f.filename and f.filename != __file__:
            return f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
    return "?"


class _Dispatch(TorchDispatchMode):
    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is not None:
            pass  # the size is given: no need to read the repeats
        elif func is aten._local_scalar_dense.default or func in SIZE_FROM_DATA:
            self.record(str(func))
        elif func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
                i is not None and i.dtype == torch.bool for i in args[1]):
            self.record(f"{func} (boolean mask)")
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_READS:
            self.record(f"Tensor.{func.__name__}")
        elif "/torch/" in sys._getframe(1).f_code.co_filename:
            pass  # a copy inside torch's own code (clip_grad_norm_'s .to(device) of device tensors): its business
        elif func in (torch.Tensor.to, torch.Tensor.cuda) and not kwargs.get("non_blocking", False) and (
                func is torch.Tensor.cuda or "device" in kwargs
                or any(isinstance(a, (str, torch.device)) for a in args[1:])):
            self.record(f"Tensor.{func.__name__} (blocking)")
        elif func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None:
            self.record(f"torch.{func.__name__}(device=)")
        return func(*args, **kwargs)


class SyncCounter:
    """Counts would-be host syncs on this thread (see the module docstring); `calls` says what and where."""

    def __init__(self):
        self.calls: list[str] = []
        self._modes = (_Function(self._record), _Dispatch(self._record))

    def _record(self, what: str):
        self.calls.append(f"{what} at {_where()}")

    @property
    def count(self) -> int:
        return len(self.calls)

    def __enter__(self):
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)


class CudaSyncCounter:
    """CUDA's own count: every synchronizing call warns under set_sync_debug_mode("warn"); the warnings are kept."""

    def __enter__(self):
        self._warn = warnings.catch_warnings(record=True)
        self._log = self._warn.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._warn.__exit__(*exc)
        self.calls = [f"{str(w.message).splitlines()[0]} at {w.filename.rsplit('/', 1)[-1]}:{w.lineno}"
                      for w in self._log if "synchroniz" in str(w.message)]

    @property
    def count(self) -> int:
        return len(self.calls)


def counted(real, log: list, counter=SyncCounter):
    """Method `real` wrapped so that each call's syncs (their `calls`) are appended to `log`."""
    def method(self, *args):
        with counter() as c:
            out = real(self, *args)
        log.append(c.calls)
        return out
    return method


def main(argv=None):
    """python3 -m bench.syncs [--device cuda]: train.py's loop on the toy world's LLaVA (bench/train_loop.py's data:
    photos from disk), DPO and POVID, 4 steps logging every 2nd; the syncs of each step and of each settle()."""
    import argparse
    import collections
    import json
    import tempfile
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)
    import train
    from bench.train_loop import make_assets
    counter = CudaSyncCounter if a.device.startswith("cuda") else SyncCounter
    real_step, real_settle = train.Run.step, train.Run.settle
    res = {}
    with tempfile.TemporaryDirectory() as d:
        model, data = make_assets(d, "toy", n=8)
        for mode in ("dpo", "povid"):
            steps, settles = [], []
            train.Run.step = counted(real_step, steps, counter)
            train.Run.settle = counted(real_settle, settles, counter)
            try:
                train.main([f"--mode={mode}", f"--data={data}", *model, f"--out_dir={d}/{mode}", "--max_steps=4",
                            "--batch_size=4", "--micro_batch_size=2", "--log_every=2", "--lora_rank=4",
                            f"--device={a.device}"] + (["--noise_tokens_from=each"] if mode == "povid" else []))
            finally:
                train.Run.step, train.Run.settle = real_step, real_settle
            res[mode] = {"per_step": [len(c) for c in steps], "per_settle": [len(c) for c in settles],
                         "calls": collections.Counter(x for c in steps + settles for x in c).most_common(20)}
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
