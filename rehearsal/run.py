"""The rehearsal: the README's real recipe, run as written, on a checkpoint of LLaVA-1.5-7B's shape and tiny data in
every public schema, so the path a user with llava-hf/llava-1.5-7b-hf, POVID's JSON, COCO and 8 GPUs copies is run
end to end before anyone spends GPU hours on it.

    python -m rehearsal.run --out out/rehearsal              # real widths (1-2 layers), CPU: make rehearsal
    python -m rehearsal.run --out out/rehearsal --narrow     # the same path at narrow widths (the test suite's)
    python -m rehearsal.run --out out/rehearsal_mobilevlm --model mobilevlm --ngpu 1 --no-fsdp
                                                             # mtgv/MobileVLM_V2-1.7B at full size (24 layers)
    (on a GPU machine the same command: every command picks CUDA and bf16 by itself when a GPU is present)

What it does:
  1. builds the inputs (rehearsal/checkpoints.py: llava-1.5-7b-hf's config.json with 2 layers, the real LLaMA
     tokenizer, a CLIP of ViT-L/14-336 shape with CLIP's real BPE vocabulary; rehearsal/public_data.py: real
     photographs under COCO names, POVID's JSON, COCO captions / instances, POPE's and MMHal-Bench's files, a
     stand-in for LLaVA-RLHF's judge-template file; rehearsal/public_bench.py: AMBER, Object HalBench, ScienceQA, MME);
  2. reads the README's marked blocks - real-run (training, CHAIR's ground truth), real-eval (run once per model
     with CKPT / RUN set, as the README says), real-report, real-use (transformers loads the export) - and changes
     only what the README itself names as paths (its VAR=... lines) and counts (`--max_steps=` on train.py lines,
     `--max-new-tokens` on generating lines, the GPU count, the CHAIR sample size), each change printed; MMHal's
     judge and Object HalBench's extraction are a loopback stand-in for the chat API (rehearsal/stub_openai.py);
  3. runs every command in order, timing each and sampling the summed resident memory of its process tree;
  4. runs the training commands again with --fsdp=True appended (FSDP2 instead of DDP) into a second out dir;
  5. writes OUT/rehearsal.json: per command its wall time, peak memory (whole process tree) and exit code.

A command that fails stops the rehearsal with its output's tail. Nothing here is a special path: the commands are
the README's.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time

from model.files import write_json

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
    """Shell block -> (assignments [(VAR, value)] at its top, [commands]): continuation lines joined, comments
    dropped, a for ... done loop kept whole (bash runs it as one command)."""
    assigns, cmds, cur, depth, joining = [], [], [], 0, False
    for line in block.splitlines():
        code = "" if line.lstrip().startswith("#") else re.sub(r"\s+#\s.*$", "", line).rstrip()
        if not code.strip():
            continue
        cont = code.endswith("\\")
        piece = code[:-1].rstrip() if cont else code
        if joining:
            cur[-1] += " " + piece.strip()
        else:
            cur.append(piece)
        joining = cont
        if cont:
            continue
        word = code.split()[0]
        depth += word in ("for", "while", "if") and 1 or 0
        depth -= word in ("done", "fi") and 1 or 0
        if depth:
            continue
        text = "\n".join(cur) if len(cur) > 1 and cur[0].lstrip().startswith(("for ", "while ", "if ")) \
            else " ".join(" ".join(cur).split())
        m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S+)", text)
        if m and not cmds:
            assigns.append((m.group(1), m.group(2)))
        else:
            cmds.append(text)
        cur = []
    return assigns, cmds


def adapt(cmd: str, steps: int, chair_images: int, fsdp: bool, gen_tokens: int = 8) -> str:
    """The counts the rehearsal changes (and nothing else): --max_steps on every train.py line, --max-new-tokens on
    every generating line (a random-weight model rarely stops by itself), the CHAIR sample size; --fsdp=True on
    train.py lines for the FSDP2 pass. Appended flags win over the recipes' values."""
    lines = []
    for line in cmd.split("\n"):
        if re.search(r"\btrain\.py\b", line):
            line += f" --max_steps={steps}" + (" --fsdp=True" if fsdp else "")
        if re.search(r"\b(generate|clip-rank)\b", line):
            line += f" --max-new-tokens {gen_tokens}"
        if re.search(r"\bchair-gt\b", line):
            line += f" --num-images {chair_images}"
        lines.append(line)
    return "\n".join(lines)


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
JUDGE_TEMPLATE = '''"""A stand-in for LLaVA-RLHF's Eval/eval_gpt_mmhal.py (its text is not ours to ship): the same shape, a
template string with the image contents, question, standard answer and response, rated "Rating: N"."""
template = """Rate the response for hallucination, from 0 to 6, as "Rating: N".
## Image Contents
{}
## Question
{}
## Standard Human-Generated Answer
{}
## LMM Response to Evaluate
{}
"""
'''


def build_inputs(out: str, narrow: bool, model: str = "llava", layers: int = 24, tiny_bench: bool = False) -> dict:
    """Checkpoints and public-schema data under out/inputs -> the README's input variables, pointed at them.
    model "mobilevlm": the base ($LLAVA, the one line a MobileVLM user changes) is MobileVLM_V2-1.7B in the hub's
    layout, `layers` deep (24 = the hub's). tiny_bench: a handful of questions per public_bench fixture."""
    from rehearsal.checkpoints import build_clip, build_llava, build_mobilevlm
    from rehearsal.public_bench import make_public_bench
    from rehearsal.public_data import make_public_data
    inp = os.path.join(out, "inputs")
    data = make_public_data(os.path.join(inp, "data"), image_size=480)
    bench = make_public_bench(os.path.join(inp, "data"), coco=data, image_size=480, tiny=tiny_bench)
    rlhf = os.path.join(inp, "LLaVA-RLHF")
    os.makedirs(os.path.join(rlhf, "Eval"), exist_ok=True)
    with open(os.path.join(rlhf, "Eval", "eval_gpt_mmhal.py"), "w") as f:
        f.write(JUDGE_TEMPLATE)
    base = (build_mobilevlm(os.path.join(inp, "ckpt"), narrow=narrow, layers=layers) if model == "mobilevlm" else
            build_llava(os.path.join(inp, "ckpt"), narrow=narrow))
    return {"LLAVA": base,
            "CLIP": build_clip(os.path.join(inp, "ckpt"), narrow=narrow),
            "COCO": os.path.join(data["root"], "coco"), "POVID_JSON": data["povid_pairs"],
            "SYNONYMS": data["synonyms"], "POPE": os.path.join(data["root"], "pope"),
            "MMHAL": os.path.join(data["root"], "mmhal"), "LLAVA_RLHF": rlhf, "AMBER": bench["amber_dir"],
            "OBJHAL": bench["objhal_dir"], "SQA": bench["sqa_dir"], "MME": bench["mme_dir"]}


def readme_env(assigns, inputs: dict, out: str, ngpu: int) -> tuple[dict, dict]:
    """The README's VAR= lines with the rehearsal's values: its inputs, OUT and NGPU; a value that refers to other
    variables ($OUT/...) is expanded as the shell would. -> (env, {VAR: (README's value, ours)})."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))  # the venv, activated
    ours = dict(inputs, OUT=out, NGPU=str(ngpu))
    changed = {}
    for var, val in assigns:
        if var in ours:
            env[var] = str(ours[var])
        elif "$" in val:
            used = re.findall(r"\$(\w+)", val)
            if not set(used) <= set(changed):
                raise SystemExit(f"rehearsal: the README sets {var}={val} before {sorted(set(used) - set(changed))}")
            env[var] = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], val)
        else:
            raise SystemExit(f"rehearsal: the README sets {var}={val}, an input the rehearsal has none for")
        changed[var] = (val, env[var])
    return env, changed


def rehearse(out: str, narrow: bool, steps: int, ngpu: int, chair_images: int, fsdp_pass: bool,
             models=("base", "povid", "clip_dpo"), fsdp_match: str = r"\btrain\.py\b|clip-rank",
             model: str = "llava", layers: int = 24, tiny_bench: bool = False) -> dict:
    """Build the inputs, run the README's blocks (training, evaluation per model in `models`, report, use), then the
    commands matching `fsdp_match` again with --fsdp=True. tiny_bench: a handful of questions per AMBER, Object
    HalBench, ScienceQA and MME fixture (the test suite's). Returns what rehearsal.json holds."""
    from rehearsal.stub_openai import StubServer, rehearsal_handler
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    inputs = build_inputs(out, narrow, model, layers, tiny_bench)
    t_inputs = round(time.time() - t0, 1)
    for runs in ("ddp", "fsdp"):  # each rehearsal trains afresh: train.py refuses an out_dir that holds a run
        shutil.rmtree(os.path.join(out, runs), ignore_errors=True)
    assigns, train_cmds = commands(readme_block("real-run", "bash"))
    _, eval_cmds = commands(readme_block("real-eval", "bash"))
    _, report_cmds = commands(readme_block("real-report", "bash"))
    env, changed = readme_env(assigns, inputs, os.path.join(out, "ddp"), ngpu)
    print("rehearsal: the README's variables, as the README has them -> here:")
    for k, (a, b) in changed.items():
        print(f"  {k}: {a} -> {b}")
    log = os.path.join(out, "rehearsal.log")
    open(log, "w").close()
    o = env["OUT"]
    ckpts = {"base": env["LLAVA"], "povid": f"{o}/povid/model", "clip_dpo": f"{o}/clip_dpo/model"}
    records = {"train": [run(adapt(c, steps, chair_images, False), env, log) for c in train_cmds]}
    with StubServer(handler=rehearsal_handler) as judge:
        env_j = dict(env, OPENAI_BASE_URL=judge.url, OPENAI_API_KEY="sk-rehearsal")  # a loopback judge
        for m in models:
            e = dict(env_j, CKPT=ckpts[m], RUN=f"{o}/eval/{m}")
            records[f"eval {m}"] = [run(adapt(c, steps, chair_images, False), e, log) for c in eval_cmds]
    if set(models) == set(ckpts):
        records["report"] = [run(c, env, log) for c in report_cmds]
    if model == "llava":  # transformers' Llava class reads llava-hf exports; a MobileVLM export is MobileVLM's layout
        use = os.path.join(out, "use_the_model.py")
        with open(use, "w") as f:
            f.write(readme_block("real-use", "python"))
        records["use"] = [run(f"python {shlex.quote(use)}", env, log)]
    if fsdp_pass:  # the training commands again, FSDP2 instead of DDP, into their own OUT
        env_f, _ = readme_env(assigns, inputs, os.path.join(out, "fsdp"), ngpu)
        records["fsdp"] = [run(adapt(c, steps, chair_images, True), env_f, log) for c in train_cmds
                           if re.search(fsdp_match, c)]
    rep = {"model": model, "layers": layers if model == "mobilevlm" else None, "narrow": narrow, "steps": steps,
           "ngpu": ngpu, "wall_s": round(time.time() - t0, 1),
           "inputs_s": t_inputs, "peak_mb": max(r["peak_mb"] for rs in records.values() for r in rs),
           "variables": changed, "commands": records}
    write_json(os.path.join(out, "rehearsal.json"), rep, indent=1)
    print(f"rehearsal: {sum(len(r) for r in records.values())} commands in {rep['wall_s']} s (inputs {t_inputs} s), "
          f"peak {rep['peak_mb']} MiB (the largest process tree) -> {out}/rehearsal.json")
    return rep


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/rehearsal")
    p.add_argument("--narrow", action="store_true", help="narrow widths (the test suite's variant)")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per training command")
    p.add_argument("--ngpu", type=int, default=2, help="processes per torchrun command (the README's NGPU)")
    p.add_argument("--chair-images", type=int, default=3, help="the CHAIR sample size (the README's 500)")
    p.add_argument("--no-fsdp", action="store_true", help="skip the FSDP2 pass of the training commands")
    p.add_argument("--models", default="base,povid,clip_dpo", help="which models the evaluation block runs for")
    p.add_argument("--tiny-bench", action="store_true",
                   help="a handful of AMBER / Object HalBench / ScienceQA / MME questions (all of their commands)")
    p.add_argument("--model", default="llava", choices=["llava", "mobilevlm"],
                   help="the base: llava-1.5-7b-hf's shape (2 layers), or MobileVLM_V2-1.7B in the hub's layout")
    p.add_argument("--layers", type=int, default=24, help="MobileVLM's depth (24 = the hub's, all of it)")
    a = p.parse_args(argv)
    rehearse(a.out, a.narrow, a.steps, a.ngpu, a.chair_images, not a.no_fsdp, tuple(a.models.split(",")),
             model=a.model, layers=a.layers, tiny_bench=a.tiny_bench)


if __name__ == "__main__":
    main(sys.argv[1:])
