"""The toy-world pipeline behind `make demo`: does preference tuning measurably cut hallucination?

Every stage is the project's real command line (run through the script's own main(argv), which is what the shell
command calls), exactly as a user would type it. This file holds the settings and declares the stages with what each
needs; toy/runner.py runs them two at a time on the two cores. The stages are in toy/training.py (tower, SFT, CLIP,
every DPO run), toy/pairs.py (the preference data) and toy/evaluation.py (questions, CHAIR and POPE):

    world          python -m toy.world       procedurally drawn scenes, exact annotations, tokenizer, configs
                                             (SFT captions from a careless annotator: --caption-noise)
    vision         python -m toy.pretrain_vision   the tiny LLaVA's vision tower taught to tag the scenes' objects
    sft            torchrun --nproc_per_node=2 train.py --mode=sft   captions + QA, the tower frozen, DDP on 2 cores
    clip           python -m toy.train_clip  a tiny CLIP, contrastive, with rule-injected hard negatives
    povid          hallucinate.py rules --all-turns -> train.py --mode=dpo (stage 1, 150 steps) -> train.py
                   --mode=povid (stage 2, 200 steps: online noise-triggered answers at t = 500, reference = merged
                   stage 1, the injection / noise terms weighted 0.6 / 0.4)
    injection_only the same stage 2 with the noise term's weight 0 (0.6 / 0): POVID minus its noise term
    noise_only     train.py --mode=povid from the SFT model with only the noise term (the paper's ablation)
    nll_only       train.py --mode=sft on POVID's chosen answers alone, as many steps as both stages: the control for
                   the NLL term every DPO run carries
    clip_dpo       hallucinate.py clip-rank (6 samples, CLIP-scored, filtered) + one QA pair per ranked image ->
                   train.py --mode=clip-dpo (500 steps)
    (every DPO run: LoRA r16 / alpha 32, lr 1.5e-4, beta 0.1, + the chosen answer's NLL (RPO, alpha 1), 16 pairs a
    step, its merged model saved every 50 steps)
    select         every saved model of every run is evaluated on the validation scenes; per method the last one
                   within the guards is selected (toy/selection.py: the rule, the guards and the targets)
    test           the baseline and each method's selected checkpoint on the test scenes
    report         out/toy/report.md, report.json (each change with a 95% paired-bootstrap interval over the scenes;
                   companions named when absent / drawn; recall by role), curves.png (CHAIR_i against recall along
                   training, on validation), examples.png

A stage whose output exists is reused, so a re-run only redoes what is missing (delete a stage's directory to
redo it). `--quick` shrinks everything (scenes, steps, eval set) to a smoke test of the whole pipeline. The settings
are not chosen on the test scenes: the step counts set how far each curve runs (within the time budget), and the
selection on validation decides where along it each method stops.

    python -m toy.demo [--quick] [--out out/toy] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from toy import evaluation, pairs, selection, training
from toy.report import write_report
from toy.runner import Output, Runner
from model.files import read_json, write_atomic

# n_val           500 validation scenes (the world's scenes 4,500-4,999): every saved checkpoint, 33 of them, is
#                 evaluated on them, about 10 s each; 1,000 scenes would put the pipeline over the 20-minute budget
# caption_noise   the SFT captions' annotator names each absent companion with P = 0.5 x its co-occurrence
#                 (toy/world.py written_caption): the habit DPO has to remove
# vision_steps    toy/pretrain_vision.py: 3,000 tagging steps (validation tagging AUC 0.98)
# stage1_steps    POVID stage 1: DPO on the caption and existence-question pairs
# dpo_steps       POVID stage 2, injection only and noise only; nll_only trains stage1_steps + dpo_steps
# clip_dpo_steps  CLIP-DPO
# export_every    each DPO run's merged model every 50 steps: the checkpoints the selection chooses from
FULL = dict(n_train=4000, n_test=500, n_val=500, caption_noise=0.5, vision_steps=3000, sft_steps=1500, sft_batch=32,
            clip_steps=400, stage1_steps=150, dpo_steps=200, clip_dpo_steps=500, dpo_batch=16, export_every=50,
            pope_per_image=1, clip_samples=6, clip_images=1200)
QUICK = dict(n_train=200, n_test=24, n_val=24, caption_noise=0.5, vision_steps=40, sft_steps=80, sft_batch=16,
             clip_steps=10, stage1_steps=2, dpo_steps=2, clip_dpo_steps=4, dpo_batch=8, export_every=2,
             pope_per_image=1, clip_samples=3, clip_images=24)  # a few checkpoints: every stage, not the numbers
# POVID stage 2: the injection term weighted 0.6, the noise term 0.4 (POVID's code: 0.5 / 0.5; docs/toy.md)
POVID_WEIGHTS = ["--povid_weight_injected=0.6", "--povid_weight_noise=0.4"]
# the control that isolates the noise term: POVID's stage 2 exactly (same start, reference, data, steps, injection
# weight), the noise term's weight 0. DPO on the injected pairs at weight 1 would also change the injection term's
# weight against the NLL term, so it would not tell the noise term's share apart
INJECTION_ONLY = ["--povid_weight_injected=0.6", "--povid_weight_noise=0.0"]
NOISE_ONLY = ["--povid_weight_injected=0.0", "--povid_weight_noise=1.0"]
# the noise term at t = 500, its tokens picked by the policy and scored by the reference too: train.py's default when
# docs/toy.md's numbers were made (now POVID's code's: each model picks its own)
NOISE = ["--noise_t=500", "--noise_tokens_from=policy"]


class Pipeline(Runner):
    """The stage runner (toy/runner.py) of one output directory, with what every stage reads: the world's
    directory, the settings `p` (FULL or QUICK) and the seed of the tower and the SFT."""

    def __init__(self, out: str, quick: bool, seed: int = 0):
        super().__init__(out)
        self.p, self.seed, self.quick = QUICK if quick else FULL, seed, quick
        self.world = os.path.join(out, "world")
        # stages are reused by their outputs alone, so one directory must hold one seed's models: the seeded stages
        # record theirs in their own config files
        for recorded in (self.path("vision", "train_config.json"), self.path("sft", "config.json")):
            if os.path.exists(recorded):
                with open(recorded) as f:
                    was = json.load(f)["seed"]
                if was != seed:
                    sys.exit(f"{recorded}: {out} holds the models of --seed {was}; give --seed {seed} its own --out")

    def build_world(self) -> Output:
        p = self.p
        self.stage("world", os.path.join(self.world, "splits.json"), [[
            "toy/world.py", "--out", self.world, "--n-train", str(p["n_train"]), "--n-test", str(p["n_test"]),
            "--n-val", str(p["n_val"]), "--seed", "0", "--caption-noise", str(p["caption_noise"])]])
        return Output(self.world, "world")


def declare(pl) -> dict:
    """Every stage, in the order they may start -> {"curves": {method: [(step, checkpoint Output)]}, "val": {run
    name: Output}, "test": {run name: Output}, "selected": {method: Output}}. The training runs come first, so a
    free core takes the next run before the next evaluation."""
    p = pl.p
    world = pl.build_world()
    questions = {split: evaluation.questions(pl, split, world) for split in ("val", "test")}
    rules = pairs.rules_pairs(pl, world)
    vision = training.vision(pl, world)
    sft = training.sft(pl, world, vision)
    clip = training.clip(pl, world, pairs.clip_negatives(pl, world))
    stage1 = training.dpo(pl, "povid_stage1", sft, rules, steps=p["stage1_steps"])
    ranked = pairs.clip_rank(pl, sft, clip)

    def stage2(name, weights):
        return training.dpo(pl, name, stage1, rules, mode="povid", extra=[*NOISE, *weights],
                            steps=p["dpo_steps"])

    runs = {"povid": stage2("povid", POVID_WEIGHTS), "injection_only": stage2("injection_only", INJECTION_ONLY)}
    runs["clip_dpo"] = training.dpo(pl, "clip_dpo", sft, pairs.clip_dpo_data(pl, ranked, rules), mode="clip-dpo",
                                    steps=p["clip_dpo_steps"])
    runs["noise_only"] = training.dpo(pl, "noise_only", sft, rules, mode="povid", extra=[*NOISE, *NOISE_ONLY],
                                      steps=p["dpo_steps"])
    # the control for the NLL term: the same LoRA trained on POVID's chosen answers alone, as long as both stages (the
    # DPO flags are left out for --mode=sft; its NLL is per token over the batch, the term's per answer)
    runs["nll_only"] = training.dpo(pl, "nll_only", sft, pairs.chosen_as_sft(pl, rules), mode="sft",
                                    steps=p["stage1_steps"] + p["dpo_steps"])
    first = training.checkpoints(pl, stage1, p["stage1_steps"])  # POVID's and injection only's shared stage 1
    curves = {"povid": first + training.checkpoints(pl, runs["povid"], p["dpo_steps"], p["stage1_steps"]),
              "injection_only": first + training.checkpoints(pl, runs["injection_only"], p["dpo_steps"],
                                                             p["stage1_steps"]),
              "clip_dpo": training.checkpoints(pl, runs["clip_dpo"], p["clip_dpo_steps"]),
              "noise_only": training.checkpoints(pl, runs["noise_only"], p["dpo_steps"]),
              "nll_only": training.checkpoints(pl, runs["nll_only"], p["stage1_steps"] + p["dpo_steps"])}
    # every checkpoint on the validation scenes (a shared one once), then the selection, then the test scenes
    val = {"baseline": evaluation.evaluate(pl, "val", "baseline", sft, questions["val"])}
    for method, points in curves.items():
        for step, ckpt in points:
            name = val_name(ckpt, step)
            if name not in val:
                val[name] = evaluation.evaluate(pl, "val", name, ckpt, questions["val"])
    test = {"baseline": evaluation.evaluate(pl, "test", "baseline", sft, questions["test"])}
    selected = {}
    for method in selection.METHODS:
        names = ["baseline"] + [val_name(ckpt, step) for step, ckpt in curves[method]]
        selected[method] = select_stage(pl, method, sft, curves[method], [val[n] for n in names])
        chosen = Output(lambda f=selected[method].path: read_json(f)["selected"]["checkpoint"], selected[method].stage)
        test[method] = evaluation.evaluate(pl, "test", method, chosen, questions["test"])
    return {"curves": curves, "val": val, "test": test, "selected": selected}


def val_name(ckpt: Output, step: int) -> str:
    """runs_val/<the run that saved it>/step_NNNNNN: POVID's stage-1 checkpoints are stored (and evaluated) once."""
    return f"{ckpt.stage}/step_{step:06d}"


def select_stage(pl, method, sft: Output, points, evals: list[Output]) -> Output:
    """The selection of one method, in this process once its checkpoints are evaluated on validation:
    select/METHOD.json = {rule, guards, curve (the start model, then every checkpoint's validation numbers),
    selected (the point toy/selection.py's rule picks, with its checkpoint)}."""
    out = pl.path("select", f"{method}.json")

    def write():
        curve = [{"step": 0, "checkpoint": sft.path, **evaluation.summarise(evals[0].path)}]
        for (step, ckpt), ev in zip(points, evals[1:]):
            curve.append({"step": step, "checkpoint": ckpt.path, **evaluation.summarise(ev.path)})
        base = curve[0]
        for pt in curve:
            pt["within_guards"] = selection.within_guards(pt, base)
        chosen = selection.select(curve, base)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        write_atomic(out, json.dumps({"method": method, "guards": selection.GUARDS, "curve": curve,
                                      "selected": chosen}, indent=1))
        print(f"[select {method}] step {chosen['step']} of {curve[-1]['step']} (validation recall "
              f"{100 * (chosen['recall'] - base['recall']):+.1f}, POPE F1 {100 * (chosen['pope_f1'] - base['pope_f1']):+.1f},"
              f" CHAIR_i {100 * chosen['chair_i']:.1f} vs {100 * base['chair_i']:.1f})", flush=True)

    pl.stage(f"select {method}", out, inline=write, needs=[e.stage for e in evals])
    return Output(out, f"select {method}")


def run_pipeline(out: str, quick: bool = False, seed: int = 0) -> dict:
    """Declare and run every stage of one seed, then write its report -> the report (report.json's content)."""
    t0, load0 = time.time(), os.getloadavg()
    pl = Pipeline(out, quick, seed)
    made = declare(pl)
    pl.run()
    return write_report(pl, made, time.time() - t0, load0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few-minute smoke run of every stage")
    ap.add_argument("--out", default=None, help="default: out/toy (out/toy_quick with --quick)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the tower pretraining and the SFT (the world and the DPO runs keep theirs): another "
                         "seed is another draw of the SFT model, to see the spread between them")
    args = ap.parse_args(argv)
    import torch
    # the toy model's matrices are tiny: one thread per process, two processes (or DDP ranks) on the two cores
    torch.set_num_threads(1)
    run_pipeline(args.out or ("out/toy_quick" if args.quick else "out/toy"), args.quick, args.seed)


if __name__ == "__main__":
    main()
