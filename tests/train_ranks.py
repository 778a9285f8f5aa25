"""Several train.py runs in one torchrun launch, for tests/test_train_ranks.py: the ranks start (and import torch)
once, then run each case's train.main under one gloo process group; each rank writes what every case did to
OUT/rank{r}.json ({name: "ok" or the error's text}).

    python -m torch.distributed.run --nproc_per_node=2 tests/train_ranks.py CASES.json OUT

CASES.json: [{"name", "args": [...], "fault": null or one of FAULTS}]. A fault is a test's stand-in for what real
runs meet: one rank's copy of the data file read differently, rank 0's export taking longer than the process
group's collective timeout (the group is made again with a short one for that case), each rank's image checks
recorded, whether stage 1's model is still alive when stage 2 builds its own. The slow export's case sets the
default group's timeout to 5 s (torch's private _set_pg_timeout) for itself.
"""
import json
import os
import sys
import time
from datetime import timedelta

import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402

GROUP_TIMEOUT = timedelta(minutes=2)  # a case that fails on one rank only must not hang the other for 30 minutes
SHORT_TIMEOUT_S = 5  # the slow export's case: the default group's timeout, shorter than rank 0's export


def fault(name: str, rank: int, out: str):
    """Patch what the fault stands in for; returns the undo."""
    if name == "drop_row_on_rank1":  # the data file changed between the ranks' reads
        real = train.D.load_pairs
        train.D.load_pairs = lambda *a, **k: real(*a, **k)[:-1] if rank == 1 else real(*a, **k)
        return lambda: setattr(train.D, "load_pairs", real)
    if name == "slow_export_on_rank0":  # merging and writing a 7B: minutes
        c10d._set_pg_timeout(timedelta(seconds=SHORT_TIMEOUT_S))  # the default group's collectives give up sooner
        real = train.export_model

        def slow(cfg, net, model, tok, rank, path=None, **kw):
            if rank == 0 and path and "exports" in path:  # the export every N steps (no step follows the last)
                time.sleep(SHORT_TIMEOUT_S + 1.5)
            return real(cfg, net, model, tok, rank, path, **kw)
        train.export_model = slow

        def undo():
            train.export_model = real
            c10d._set_pg_timeout(GROUP_TIMEOUT)
        return undo
    if name == "record_image_checks":
        real = train.D.ImageStore.check

        def check(self, path):
            with open(os.path.join(out, f"checked_rank{rank}.txt"), "a") as f:
                f.write(path + "\n")
            return real(self, path)
        train.D.ImageStore.check = check
        return lambda: setattr(train.D.ImageStore, "check", real)
    if name == "record_models_alive":  # a two-stage POVID run: is stage 1's model freed when stage 2 builds its own?
        import weakref
        real, built = train.build_model, []

        def build(*a, **k):
            with open(os.path.join(out, f"alive_rank{rank}.txt"), "a") as f:
                f.write(" ".join(str(ref() is not None) for ref in built) + "\n")
            model = real(*a, **k)
            built.append(weakref.ref(model))
            return model
        train.build_model = build
        return lambda: setattr(train, "build_model", real)
    raise ValueError(f"unknown fault {name!r}")


def main(cases_path: str, out: str):
    dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
    rank = dist.get_rank()
    with open(cases_path) as f:
        cases = json.load(f)
    results = {}
    for case in cases:
        undo = fault(case["fault"], rank, out) if case.get("fault") else None
        try:
            train.main(case["args"])
            results[case["name"]] = "ok"
        except SystemExit as e:
            results[case["name"]] = str(e)
        except Exception as e:  # noqa: BLE001  (the test reads it)
            results[case["name"]] = f"{type(e).__name__}: {e}"
        finally:
            if undo:
                undo()
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
