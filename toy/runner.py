"""How the toy demo's stages run: each stage is one or more of the project's command lines, reused when its output
exists, run in this process or in a second one beside it.

A command line `python SCRIPT ARGS...` (or `python -m toy.X ARGS...`) runs as the script's own main(ARGS) in this
process: the same code path as the shell, minus a torch import per stage. Its output goes to the pipeline's log; a
failure shows the log's tail and stops the pipeline. A background stage runs its command lines the same way in a
second process (spawned: a fresh interpreter, no state shared), one at a time, so that two stages that do not wait
on each other share the machine's two cores. toy/demo.py builds the pipeline on a Runner:

    r = Runner("out/toy")
    r.stage("world", "out/toy/world/splits.json", [["toy/world.py", "--out", "out/toy/world"]])
    r.stage("clip", "out/toy/clip/model.safetensors", [["toy/train_clip.py", ...]], background=True)
    r.join()  # waits for the background stage; its log joins pipeline.log
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
import traceback

PY = sys.executable


def run(cmd, log_path):
    """Run one stage's command line, `python SCRIPT ARGS...`, as the script's own main(ARGS) in this process (the
    same code path as the shell, minus a torch import per stage); its output goes to the log file, and a failure
    shows the log's tail and stops the pipeline."""
    t0 = time.time()
    name = os.path.splitext(cmd[1])[0].replace("/", ".")  # "toy/world.py" -> toy.world, run as python -m toy.world
    printable = " ".join((["-m", name] if "." in name else [cmd[1]]) + cmd[2:])
    print(f"  $ python {printable}", flush=True)
    module = importlib.import_module(name)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"$ python {printable}", flush=True)
        try:
            module.main(cmd[2:])
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code)
        except Exception:  # noqa: BLE001 - reported with its traceback in the log, then the pipeline stops
            traceback.print_exc()
            rc = 1
    if rc != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        sys.exit(f"stage failed (exit {rc}) after {time.time() - t0:.0f}s: python {printable}\n--- {log_path}\n{tail}")
    return time.time() - t0


def _run_commands(cmds, log_path, threads):
    """A background stage's process: its command lines in order, each as run() does it (a failure exits non-zero)."""
    import torch
    torch.set_num_threads(threads)
    for c in cmds:
        run([PY] + c, log_path)


class Runner:
    """Runs the stages of one output directory: `out`/pipeline.log collects every command's output, `ran` and
    `reused` name the stages (for the report's wall-time line), `bg` is the stage running in a second process."""

    def __init__(self, out: str):
        self.out = out
        self.log = os.path.join(out, "pipeline.log")
        self.ran, self.reused = [], []
        self.bg = None  # {name, proc, log, t0}
        os.makedirs(out, exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def stage(self, name, done_marker, cmds, background=False):
        """Run `cmds` unless `done_marker` exists (then the stage is reused). A `background` stage runs them the same
        way, through run(), in a second process while this one goes on (the machine has 2 cores and each stage uses
        one thread): one at a time, so starting another, or `join()`, waits for it first."""
        if os.path.exists(done_marker):
            print(f"[{name}] reused ({done_marker})")
            self.reused.append(name)
            return
        self.ran.append(name)
        if not background:
            print(f"[{name}]", flush=True)
            t = sum(run([PY] + c, self.log) for c in cmds)
            print(f"[{name}] done in {t:.0f}s", flush=True)
            return
        self.join()
        print(f"[{name}] started in the background", flush=True)
        os.makedirs(self.path("logs"), exist_ok=True)
        log = self.path("logs", name.replace(" ", "_") + ".log")
        open(log, "w").close()  # empty (not a failed earlier attempt's), and there for join() even if the child dies
        import multiprocessing
        import torch
        # spawn, not fork: a fresh interpreter (one torch import for all the stage's commands), no state shared
        proc = multiprocessing.get_context("spawn").Process(target=_run_commands,
                                                            args=(cmds, log, torch.get_num_threads()))
        proc.start()
        self.bg = {"name": name, "log": log, "t0": time.time(), "proc": proc}

    def join(self):
        """Wait for the background stage, if any; its log joins pipeline.log; a failure stops the pipeline."""
        bg, self.bg = self.bg, None
        if bg is None:
            return
        bg["proc"].join()
        with open(bg["log"]) as f:
            out = f.read()
        with open(self.log, "a") as log:
            log.write(out)
        if bg["proc"].exitcode != 0:
            sys.exit(f"stage {bg['name']} failed (exit {bg['proc'].exitcode}) in the background\n--- {bg['log']}\n"
                     f"{out[-3000:]}")
        print(f"[{bg['name']}] done in the background, {time.time() - bg['t0']:.0f}s after its start", flush=True)

    def stop(self):
        """Kill the background stage's process (the pipeline is stopping on an error)."""
        if self.bg and self.bg["proc"].is_alive():
            self.bg["proc"].kill()
