"""The rehearsal: the README's real recipe, run as written, on a checkpoint of LLaVA-1.5-7B's shape and tiny data in
every public schema, so the path a user with llava-hf/llava-1.5-7b-hf, POVID's JSON, COCO and 8 GPUs copies is run
end to end before anyone spends GPU hours on it.

    python -m rehearsal.run --out out/rehearsal              # real widths (1-2 layers), CPU: make rehearsal
    python -m rehearsal.run --out out/rehearsal --narrow     # the same path at narrow widths (the test suite's)
    (on a GPU machine the same command: every command picks CUDA and bf16 by itself when a GPU is present)

What it does:
  1. builds the inputs (rehearsal/checkpoints.py: llava-1.5-7b-hf's config.json with 1-2 layers, the real LLaMA
     tokenizer, a CLIP of ViT-L/14-336 shape with CLIP's real BPE vocabulary; rehearsal/public_data.py: real
     photographs under COCO names, POVID's JSON, COCO captions / instances, POPE's and MMHal-Bench's files);
  2. reads the README's real-run block (between the `real-run` markers) and changes only what the README itself
     names as paths (its VAR=... lines) and step counts (`--max_steps=` on every train.py line, the number of
     GPUs, the CHAIR sample size), each change printed; then runs every command in order, timing each and sampling
     the summed resident memory of its process tree;
  3. runs the README's "use the model" Python block (transformers loads the export) the same way;
  4. runs the training commands again with --fsdp=True appended (FSDP2 instead of DDP) into a second out dir;
  5. writes OUT/rehearsal.json: per command its wall time, peak memory (whole process tree) and exit code.

A command that fails stops the rehearsal with its output's tail. Nothing here is a special path: the commands are
the README's.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


# ---------------------------------------------------------------------------------------------- the README's block
def readme_block(name: str, lang: str, readme: str = README) -> str:
    """The fenced `lang` code block between <!-- name:begin --> and <!-- name:end --> in the README."""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    m = re.search(rf"<!-- {name}:begin -->(.*?)<!-- {name}:end -->", text, re.S)
    if not m:
        raise SystemExit(f"{readme}: no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    code = re.search(rf"```{lang}\n(.*?)```", m.group(1), re.S)
    if not code:
        raise SystemExit(f"{readme}: the {name} block holds no ```{lang} code")
    return code.group(1)


def commands(block: str):
    """Shell block -> (assignments {VAR: value}, [command lines]): continuation lines joined, comments dropped."""
    assigns, cmds, cur = {}, [], ""
    for line in block.splitlines():
        line = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        cur += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        m = re.fullmatch(r"\s*([A-Z_][A-Z0-9_]*)=(\S+)\s*", cur)
        if m and not cmds:
            assigns[m.group(1)] = m.group(2)
        else:
            cmds.append(" ".join(cur.split()))
        cur = ""
    return assigns, cmds


def adapt(cmd: str, steps: int, chair_images: int, fsdp: bool) -> str:
    """The step counts the rehearsal changes (and nothing else): --max_steps on every train.py line, the CHAIR
    sample size; --fsdp=True on train.py lines for the FSDP2 pass."""
    if re.search(r"\btrain\.py\b", cmd):
        cmd += f" --max_steps={steps}" + (" --fsdp=True" if fsdp else "")
    return re.sub(r"--num-images[ =]\d+", f"--num-images {chair_images}", cmd)


# ---------------------------------------------------------------------------------------------- running one command
def _tree_rss_mb(pid: int) -> float:
    """Summed RSS (MiB) of `pid` and every descendant (torchrun's ranks), read from /proc."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total / 2 ** 20


def run(cmd: str, env: dict, log_path: str) -> dict:
    """Run one shell command (from ROOT), its output into log_path; -> {cmd, wall_s, peak_mb, rc}."""
    print(f"$ {cmd}", flush=True)
    t0, peak = time.time(), 0.0
    with open(log_path, "a") as log:
        log.write(f"$ {cmd}\n")
        log.flush()
        p = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            nonlocal peak
            while not done.wait(0.25):
                peak = max(peak, _tree_rss_mb(p.pid))
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = p.wait()
        done.set()
        th.join()
    rec = {"cmd": cmd, "wall_s": round(time.time() - t0, 1), "peak_mb": round(peak), "rc": rc}
    print(f"  -> rc {rc}, {rec['wall_s']} s, peak {rec['peak_mb']} MiB", flush=True)
    if rc != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise SystemExit(f"rehearsal: command failed (rc {rc}): {cmd}\n--- {log_path}\n{tail}")
    return rec


# ---------------------------------------------------------------------------------------------- main
def build_inputs(out: str, narrow: bool) -> dict:
    """Checkpoints and public-schema data under out/inputs; -> the README's path variables, pointed at them."""
    from rehearsal.checkpoints import build_clip, build_llava
    from rehearsal.public_data import build_public_data
    inp = os.path.join(out, "inputs")
    llava = build_llava(os.path.join(inp, "llava-1.5-7b-hf"), narrow=narrow)
    clip = build_clip(os.path.join(inp, "clip-vit-large-patch14-336"), narrow=narrow)
    data = build_public_data(os.path.join(inp, "data"))
    return {"LLAVA": llava, "CLIP": clip, **{k: v for k, v in data.items() if k.isupper()}}


def rehearse(out: str, narrow: bool, steps: int, ngpu: int, chair_images: int, fsdp_pass: bool) -> dict:
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    paths = build_inputs(out, narrow)
    assigns, cmds = commands(readme_block("real-run", "bash"))
    use_py = readme_block("real-use", "python")
    missing = sorted(set(assigns) - set(paths) - {"OUT", "NGPU"})
    if missing:
        raise SystemExit(f"rehearsal: the README's block sets {missing}, which the rehearsal has no input for")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.update({k: str(paths[k]) for k in assigns if k in paths}, OUT=os.path.join(out, "ddp"), NGPU=str(ngpu))
    changed = {k: (assigns[k], env[k]) for k in assigns}
    print("rehearsal: the README's variables, as the README has them -> here:")
    for k, (a, b) in changed.items():
        print(f"  {k}: {a} -> {b}")
    log = os.path.join(out, "rehearsal.log")
    open(log, "w").close()
    records = {"ddp": [run(adapt(c, steps, chair_images, False), env, log) for c in cmds]}
    use = os.path.join(out, "use_the_model.py")
    with open(use, "w") as f:
        f.write(use_py)
    records["use"] = [run(f"python {shlex.quote(use)}", env, log)]
    if fsdp_pass:
        env_f = dict(env, OUT=os.path.join(out, "fsdp"))
        train_cmds = [c for c in cmds if re.search(r"\btrain\.py\b|clip-rank", c)]
        records["fsdp"] = [run(adapt(c, steps, chair_images, True), env_f, log) for c in train_cmds]
    rep = {"narrow": narrow, "steps": steps, "ngpu": ngpu, "wall_s": round(time.time() - t0, 1),
           "peak_mb": max(r["peak_mb"] for rs in records.values() for r in rs), "variables": changed,
           "commands": records}
    tmp = os.path.join(out, "rehearsal.json.tmp")
    with open(tmp, "w") as f:
        json.dump(rep, f, indent=1)
    os.replace(tmp, os.path.join(out, "rehearsal.json"))
    print(f"rehearsal: {sum(len(r) for r in records.values())} commands in {rep['wall_s']} s, peak "
          f"{rep['peak_mb']} MiB (one command's process tree) -> {out}/rehearsal.json")
    return rep


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/rehearsal")
    p.add_argument("--narrow", action="store_true", help="narrow widths (the test suite's variant)")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per training command")
    p.add_argument("--ngpu", type=int, default=2, help="processes per torchrun command (the README's NGPU)")
    p.add_argument("--chair-images", type=int, default=3, help="the CHAIR sample size (the README's 500)")
    p.add_argument("--no-fsdp", action="store_true", help="skip the FSDP2 pass of the training commands")
    a = p.parse_args(argv)
    rehearse(a.out, a.narrow, a.steps, a.ngpu, a.chair_images, not a.no_fsdp)


if __name__ == "__main__":
    main(sys.argv[1:])
