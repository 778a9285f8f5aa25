"""How the toy demo's stages run: declared first, with what each needs, then run two at a time on the two cores.

A stage is one or more of the project's command lines (`python SCRIPT ARGS...` or `python -m toy.X ARGS...`), each
run as the script's own main(ARGS): the same code path as the shell, minus an interpreter and a torch import per
command. A stage takes one core: it runs in one of two worker processes that live as long as run() (spawned once, one
torch thread each; every stage seeds what it draws, so which worker ran what before changes no number). A stage with
`cores=2` has the machine to itself, in fresh processes: one with two threads, or, with `ddp=True`, two as
`torchrun --standalone --nproc_per_node=2` starts them, one rank per core (train.py's DDP over gloo). An `inline`
stage is a small Python step (a data file, the checkpoint selection) run in this process. A stage whose output (its
marker) exists is reused, so a re-run only redoes what is missing.

run() starts the stages in the order they were declared, each as soon as the stages it needs are done and a core is
free; a stage that does not fit waits, and none declared after it overtakes it. A whole-machine stage starts as soon as
one core is free: it shares the other with the stage still running there until that one ends (three busy processes on
two cores keep both cores busy; waiting would leave one idle), and nothing else starts until it is done. The order changes no number: every
stage is seeded and reads only its inputs. Each stage's output goes to logs/NAME.log, appended to pipeline.log when it
ends; a failure shows the log's tail, stops the other workers and exits.

    r = Runner("out/toy")
    r.stage("world", "out/toy/world/splits.json", [["toy/world.py", "--out", "out/toy/world"]])
    r.stage("clip", "out/toy/clip/model.safetensors", [["toy/train_clip.py", ...]], needs=["world"])
    r.run()
"""
from __future__ import annotations

import contextlib
import importlib
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field

PY = sys.executable
CORES = 2  # the machine the demo is sized for; one torch thread per worker


def run(cmd, log_path, launcher="python", echo=True):
    """Run one command line, `python SCRIPT ARGS...`, as the script's own main(ARGS) in this process; its output goes
    to the log file, and a failure shows the log's tail and exits non-zero. Returns the seconds it took."""
    t0 = time.time()
    name = os.path.splitext(cmd[1])[0].replace("/", ".")  # "toy/world.py" -> toy.world, run as python -m toy.world
    printable = " ".join((["-m", name] if "." in name and launcher == "python" else [cmd[1]]) + cmd[2:])
    if echo:
        print(f"  $ {launcher} {printable}", flush=True)
    module = importlib.import_module(name)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"$ {launcher} {printable}", flush=True)
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
        sys.exit(f"stage failed (exit {rc}) after {time.time() - t0:.0f}s: {launcher} {printable}\n--- {log_path}\n"
                 f"{tail}")
    return time.time() - t0


def _worker(cmds, log_path, threads, env):
    """A stage's command lines in order, each as run() does it. `env` sets a DDP rank's variables (RANK, WORLD_SIZE,
    ...), which train.py reads as torchrun's; only rank 0 echoes the commands."""
    import torch
    torch.set_num_threads(threads)
    os.environ.update(env)
    launcher = "torchrun --standalone --nproc_per_node=2" if env else "python"
    for c in cmds:
        run([PY] + c, log_path, launcher, echo=env.get("RANK", "0") == "0")


def _pool_task(cmds, log_path):
    """A one-core stage in a pool worker -> its exit status (the worker lives on for the next stage)."""
    try:
        _worker(cmds, log_path, 1, {})
        return 0
    except SystemExit as e:  # run() exits with the log's tail, which the log holds already
        return e.code if isinstance(e.code, int) and e.code else 1
    except BaseException:  # noqa: BLE001 - into the log, then the pipeline stops
        with open(log_path, "a") as f:
            traceback.print_exc(file=f)
        return 1


@dataclass(frozen=True)
class Output:
    """What a declared stage makes (a file or a directory; or a function that gives it once the stage has run) and
    the stage's name, which the stages that read it list in their needs."""
    path: object
    stage: str


@dataclass
class Stage:
    name: str
    marker: str  # the stage's output: when it exists, the stage is done (and reused by a re-run)
    cmds: list | None = None  # command lines [script, args...], or a function returning them when the stage starts
    needs: list = field(default_factory=list)  # names of the stages that must be done first
    cores: int = 1  # 2: the stage has the machine to itself
    ddp: bool = False  # with cores=2: two DDP ranks (torchrun --nproc_per_node=2) instead of one process, two threads
    inline: object = None  # a function run in this process instead of command lines (quick data steps)


class Runner:
    """The declared stages of one output directory; `ran` and `reused` name them for the report's wall-time line,
    `seconds` holds how long each one that ran took."""

    def __init__(self, out: str):
        self.out = out
        self.log = os.path.join(out, "pipeline.log")
        self.stages: dict[str, Stage] = {}
        self.ran, self.reused, self.seconds = [], [], {}
        self.running: dict[str, dict] = {}  # name -> {stage, t0, log, cores, task (a pool worker's) or procs}
        self.pool = None  # the two one-core workers, while run() runs
        os.makedirs(out, exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def stage(self, name, marker, cmds=None, needs=(), cores=1, ddp=False, inline=None):
        """Declare a stage (nothing runs until run()); `needs` must name stages declared before it."""
        if name in self.stages:
            raise ValueError(f"stage {name!r} declared twice")
        unknown = [n for n in needs if n not in self.stages]
        if unknown:
            raise ValueError(f"stage {name!r} needs undeclared stages {unknown}")
        if (cmds is None) == (inline is None):
            raise ValueError(f"stage {name!r}: give command lines or an inline function, one of them")
        self.stages[name] = Stage(name, marker, cmds, list(needs), cores, ddp, inline)

    def run(self, cores: int = CORES):
        """Run every declared stage (see the module docstring for the order)."""
        import multiprocessing
        pending, done = list(self.stages.values()), set()
        # spawn, not fork: fresh interpreters, nothing inherited from this process
        self.pool = multiprocessing.get_context("spawn").Pool(cores)
        try:
            while pending or self.running:
                for name in [n for n, r in self.running.items() if _exited(r)]:
                    self._finish(name)
                    done.add(name)
                free = cores - sum(r["cores"] for r in self.running.values())
                st = next((s for s in pending if all(n in done for n in s.needs)), None)  # the first ready stage
                runs_here = st is not None and (os.path.exists(st.marker) or st.inline is not None)
                # a whole-machine stage starts beside one running stage rather than leave a core idle until it ends
                fits = st is not None and (min(st.cores, cores) <= free or (st.cores >= cores and free >= 1))
                if st is None or not (runs_here or fits):  # it waits, and nothing declared after it overtakes it
                    if pending and not self.running:
                        raise RuntimeError(f"stages {[s.name for s in pending]} wait on stages that never ran")
                    if self.running:
                        time.sleep(0.05)
                    continue
                pending.remove(st)
                if os.path.exists(st.marker):
                    print(f"[{st.name}] reused ({st.marker})")
                    self.reused.append(st.name)
                    done.add(st.name)
                elif st.inline is not None:
                    t0 = time.time()
                    st.inline()
                    self.ran.append(st.name)
                    self.seconds[st.name] = round(time.time() - t0, 1)
                    done.add(st.name)
                else:
                    self._start(st, min(st.cores, cores))
        except BaseException:
            self.stop()
            raise
        self.pool.close()
        self.pool.join()

    def _start(self, st: Stage, cores: int):
        import multiprocessing
        os.makedirs(self.path("logs"), exist_ok=True)
        log = self.path("logs", st.name.replace(" ", "_").replace("/", "_") + ".log")
        open(log, "w").close()  # empty (not a failed earlier attempt's), and there for _finish even if a worker dies
        cmds = st.cmds() if callable(st.cmds) else st.cmds
        r = {"stage": st, "t0": time.time(), "log": log, "cores": cores, "procs": [], "task": None}
        if cores == 1:
            print(f"[{st.name}] started", flush=True)
            r["task"] = self.pool.apply_async(_pool_task, (cmds, log))
        else:  # the whole machine: fresh processes, two threads or two DDP ranks
            ranks = cores if st.ddp else 1
            envs = [{}] if ranks == 1 else [_rank_env(k, ranks, port) for port in [_free_port()] for k in range(ranks)]
            ctx = multiprocessing.get_context("spawn")
            for k, env in enumerate(envs):
                rank_log = log if k == 0 else log[:-4] + f".rank{k}.log"  # the other ranks print little (train.py)
                open(rank_log, "w").close()
                r["procs"].append(ctx.Process(target=_worker, args=(cmds, rank_log, cores // ranks, env)))
            print(f"[{st.name}] started ({f'{ranks} DDP ranks' if ranks > 1 else f'{cores} threads'})", flush=True)
            for p in r["procs"]:
                p.start()
        self.running[st.name] = r

    def _finish(self, name):
        """A stage's workers are done: its log joins pipeline.log; a failure stops the pipeline."""
        r = self.running.pop(name)
        for p in r["procs"]:
            p.join()
        codes = [r["task"].get()] if r["task"] is not None else [p.exitcode for p in r["procs"]]
        with open(r["log"]) as f:
            out = f.read()
        with open(self.log, "a") as log:
            log.write(out)
        bad = [c for c in codes if c != 0]
        if bad:
            self.stop()
            sys.exit(f"stage {name} failed (exit {bad[0]})\n--- {r['log']}\n{out[-3000:]}")
        self.ran.append(name)
        self.seconds[name] = round(time.time() - r["t0"], 1)
        print(f"[{name}] done in {self.seconds[name]:.0f}s", flush=True)

    def stop(self):
        """Kill the running stages' processes and the workers (the pipeline is stopping on an error)."""
        for r in self.running.values():
            for p in r["procs"]:
                if p.is_alive():
                    p.kill()
        self.running = {}
        if self.pool is not None:
            self.pool.terminate()


def _exited(r):
    return r["task"].ready() if r["task"] is not None else not any(p.is_alive() for p in r["procs"])


def _rank_env(rank, world, port):
    """What torchrun --standalone gives each rank: train.py's init_process_group reads these (env://)."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
