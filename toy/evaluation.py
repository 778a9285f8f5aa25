"""The toy demo's evaluation stages: CHAIR and POPE of a model on held-out scenes, through eval.py's commands.

    questions   the split's caption prompts (CHAIR) and `eval.py pope-build` questions (random, popular, adversarial)
    evaluate    `eval.py generate` then `eval.py chair` / `eval.py pope` for one model -> its run directory

The split is the pipeline's (test by default, val with --eval-split val): runs/NAME/ for test, runs_val/NAME/ for
validation. Every function takes the pipeline (toy/demo.py's Pipeline).
"""
from __future__ import annotations

import json
import os


def questions(pl):
    qdir = pl.path("questions" + pl.suffix)
    os.makedirs(qdir, exist_ok=True)
    with open(f"{pl.world}/{pl.split}_questions.jsonl") as f:  # the world's own caption prompt
        qs = [json.loads(x) for x in f if x.strip()]
    with open(f"{qdir}/chair.jsonl", "w") as f:
        for q in qs:
            q["image"] = os.path.abspath(os.path.join(pl.world, q["image"]))
            f.write(json.dumps(q) + "\n")
    cmds = []
    for split in ("random", "popular", "adversarial"):
        cmds.append(["eval.py", "pope-build", "--annotations", f"{pl.world}/{pl.split}_annotations.json",
                     "--split", split, "--num-per-image", str(pl.p["pope_per_image"]), "--seed", "0",
                     "--output", f"{qdir}/pope_{split}.jsonl"])
    pl.stage("questions" + pl.suffix, f"{qdir}/pope_adversarial.jsonl", cmds)
    return qdir


def evaluate(pl, name, ckpt, qdir, background=False):
    """CHAIR and POPE of one run (in the background: join() before reading them)."""
    run_dir = pl.path("runs" + pl.suffix, name)
    cmds = [["eval.py", "generate", "--checkpoint", ckpt, "--questions", f"{qdir}/chair.jsonl",
             "--output", f"{run_dir}/chair_answers.jsonl", "--batch-size", "64", "--max-new-tokens", "48",
             "--template", "llava_hf"],
            ["eval.py", "chair", "--answers", f"{run_dir}/chair_answers.jsonl", "--annotations",
             f"{pl.world}/{pl.split}_annotations.json", "--out", f"{run_dir}/chair.json"]]
    for split in ("random", "popular", "adversarial"):
        cmds += [["eval.py", "generate", "--checkpoint", ckpt, "--questions", f"{qdir}/pope_{split}.jsonl",
                  "--output", f"{run_dir}/pope_{split}_answers.jsonl", "--batch-size", "64",
                  "--max-new-tokens", "4", "--template", "llava_hf"],
                 ["eval.py", "pope", "--answers", f"{run_dir}/pope_{split}_answers.jsonl", "--questions",
                  f"{qdir}/pope_{split}.jsonl", "--out", f"{run_dir}/pope_{split}.json"]]
    pl.stage(f"eval{pl.suffix} {name}", f"{run_dir}/pope_adversarial.json", cmds, background=background)
    return run_dir
