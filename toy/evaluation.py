"""The toy demo's evaluation stages: CHAIR and POPE of a model on held-out scenes, through eval.py's commands.

    questions   a split's caption prompts (CHAIR) and `eval.py pope-build` questions (random, popular, adversarial)
    evaluate    `eval.py generate` then `eval.py chair` / `eval.py pope` for one checkpoint -> its run directory
    summarise   a run directory's numbers: CHAIR_s, CHAIR_i, recall, length, POPE F1 and yes-ratio (mean of 3 splits)

Two held-out splits (toy/world.py): every checkpoint saved along a run is evaluated on the validation scenes
(runs_val/RUN/step_NNNNNN/), which choose the checkpoint (toy/selection.py); only the chosen one, and the baseline, are
evaluated on the test scenes (runs/METHOD/), which are reported. Every function takes the pipeline (toy/demo.py).

    evaluate(pl, "val", "povid/step_000200", ckpt, questions["val"])   # -> Output(runs_val/povid/step_000200, stage)
"""
from __future__ import annotations

import json
import os

from toy.runner import Output

SPLIT_DIRS = {"test": "", "val": "_val"}  # questions/ + runs/ for test, questions_val/ + runs_val/ for validation
POPE_SPLITS = ("random", "popular", "adversarial")


def questions(pl, split, world: Output) -> Output:
    """The split's questions, written once: chair.jsonl (the world's caption prompt per scene, absolute image paths)
    and pope_{random,popular,adversarial}.jsonl."""
    qdir = pl.path("questions" + SPLIT_DIRS[split])
    name = "questions" + SPLIT_DIRS[split]

    def chair_questions():
        os.makedirs(qdir, exist_ok=True)
        with open(f"{pl.world}/{split}_questions.jsonl") as f:
            qs = [json.loads(x) for x in f if x.strip()]
        with open(f"{qdir}/chair.jsonl", "w") as f:
            for q in qs:
                q["image"] = os.path.abspath(os.path.join(pl.world, q["image"]))
                f.write(json.dumps(q) + "\n")

    pl.stage(name + " chair", f"{qdir}/chair.jsonl", inline=chair_questions, needs=[world.stage])
    pl.stage(name, f"{qdir}/pope_adversarial.jsonl", [
        ["eval.py", "pope-build", "--annotations", f"{pl.world}/{split}_annotations.json", "--split", s,
         "--num-per-image", str(pl.p["pope_per_image"]), "--seed", "0", "--output", f"{qdir}/pope_{s}.jsonl"]
        for s in POPE_SPLITS], needs=[name + " chair"])
    return Output(qdir, name)


def evaluate(pl, split, name, ckpt: Output, qdir: Output) -> Output:
    """CHAIR and POPE of one checkpoint on `split` -> runs[_val]/NAME/. `ckpt.path` may be a function (the checkpoint
    is known only when the stage starts: the selected one)."""
    run_dir = pl.path("runs" + SPLIT_DIRS[split], name)
    q = qdir.path

    def cmds():
        model = ckpt.path() if callable(ckpt.path) else ckpt.path
        out = [["eval.py", "generate", "--checkpoint", model, "--questions", f"{q}/chair.jsonl",
                "--output", f"{run_dir}/chair_answers.jsonl", "--batch-size", "64", "--max-new-tokens", "48",
                "--template", "llava_hf"],
               ["eval.py", "chair", "--answers", f"{run_dir}/chair_answers.jsonl", "--annotations",
                f"{pl.world}/{split}_annotations.json", "--out", f"{run_dir}/chair.json"]]
        for s in POPE_SPLITS:  # "Yes." / "No.": 4 new tokens are plenty
            out += [["eval.py", "generate", "--checkpoint", model, "--questions", f"{q}/pope_{s}.jsonl",
                     "--output", f"{run_dir}/pope_{s}_answers.jsonl", "--batch-size", "64", "--max-new-tokens", "4",
                     "--template", "llava_hf"],
                    ["eval.py", "pope", "--answers", f"{run_dir}/pope_{s}_answers.jsonl", "--questions",
                     f"{q}/pope_{s}.jsonl", "--out", f"{run_dir}/pope_{s}.json"]]
        return out

    stage = f"eval{SPLIT_DIRS[split]} {name}"
    pl.stage(stage, f"{run_dir}/pope_adversarial.json", cmds, needs=[ckpt.stage, qdir.stage])
    return Output(run_dir, stage)


def summarise(run_dir) -> dict:
    """The report's per-run keys from eval.py's metrics files (rates as fractions)."""
    from evals.report import collect_run
    r = collect_run(run_dir)
    c, pope = r["chair"], r["pope"]
    f1 = [pope[s]["f1"] for s in POPE_SPLITS]
    yes = [pope[s]["yes_ratio"] for s in POPE_SPLITS]
    return {"chair_s": c["chair_s"], "chair_i": c["chair_i"], "recall": c["recall"], "length": c["length"],
            "pope_f1": sum(f1) / 3, "pope_yes_ratio": sum(yes) / 3,
            **{f"pope_f1_{s}": pope[s]["f1"] for s in POPE_SPLITS}}
