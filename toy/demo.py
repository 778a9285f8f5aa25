"""The toy-world pipeline behind `make demo`: does preference tuning measurably cut hallucination?

Every stage is the project's real command line (run through the script's own main(argv), which is what the shell
command calls), exactly as a user would type it. Stages that do not wait on each other run two at a time, one in a
second process (2 cores, one torch thread each; run_all() says which):

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
import contextlib
import importlib
import traceback
import sys
import time

PY = sys.executable

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
# --rpo_alpha=1: every DPO run also lowers the chosen answer's per-token NLL (RPO; dpo.py). Without it DPO lowered
# how readily every companion is named, drawn or not, and the cut cost recall and POPE F1 faster (README, "Why")
DPO_ARGS = ["--lora_rank=16", "--lora_alpha=32", "--lr=1.5e-4", "--beta=0.1", "--rpo_alpha=1", "--warmup_steps=10",
            "--log_every=25"]
# POVID stage 2 (and the sweep): the injection term weighted 0.6, the noise term 0.4. POVID's code weights them
# 0.5 / 0.5; here that cut 36-40% but cost 2.5-3.1 points of recall on validation, and 0.7 / 0.3 (the demo's weights
# up to faa3043) cut 3-4 points less for the same recall (README, "How the settings were chosen")
POVID_WEIGHTS = ["--povid_weight_injected=0.6", "--povid_weight_noise=0.4"]
QUICK = dict(n_train=200, n_test=24, n_val=24, caption_noise=0.5, vision_steps=40, sft_steps=80, sft_batch=16,
             clip_steps=10, stage1_steps=4, dpo_steps=4, clip_dpo_steps=4, dpo_batch=8, pope_per_image=1,
             clip_samples=3, clip_images=24, sweep=(0, 500))


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


class Pipeline:
    def __init__(self, out: str, quick: bool, split: str = "test", seed: int = 0):
        if split not in ("test", "val"):
            raise ValueError(f"evaluation split must be 'test' or 'val', got {split!r}")
        self.out, self.p, self.split, self.seed = out, QUICK if quick else FULL, split, seed
        self.suffix = "" if split == "test" else "_" + split  # runs/ + report.md for test, runs_val/ ... for val
        self.world = os.path.join(out, "world")
        self.log = os.path.join(out, "pipeline.log")
        self.ran, self.reused = [], []  # stage names, for the report's wall-time line
        self.bg = None  # the stage running in a second process: {name, proc, log, t0}
        os.makedirs(out, exist_ok=True)
        # stages are reused by their outputs alone, so one directory must hold one seed's models: the seeded stages
        # record theirs in their own config files
        for recorded in (self.path("vision", "train_config.json"), self.path("sft", "config.json")):
            if os.path.exists(recorded):
                with open(recorded) as f:
                    was = json.load(f)["seed"]
                if was != seed:
                    sys.exit(f"{recorded}: {out} holds the models of --seed {was}; give --seed {seed} its own --out")

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

    # ------------------------------------------------------------------ stages
    def build_world(self):
        p = self.p
        self.stage("world", os.path.join(self.world, "splits.json"), [[
            "toy/world.py", "--out", self.world, "--n-train", str(p["n_train"]), "--n-test", str(p["n_test"]),
            "--n-val", str(p["n_val"]), "--seed", "0", "--caption-noise", str(p["caption_noise"])]])
        with open(os.path.join(self.world, "splits.json")) as f:
            if not json.load(f).get(self.split):
                sys.exit(f"{self.world}/splits.json has no {self.split!r} scenes (a world from before the validation "
                         f"split?): delete {self.world} to regenerate it (train and test scenes stay the same)")

    def vision(self):
        p, out = self.p, self.path("vision")
        self.stage("vision", os.path.join(out, "metrics.json"), [[
            "toy/pretrain_vision.py", f"--annotations={self.world}/annotations.json", f"--splits={self.world}/splits.json",
            "--eval_split=val", f"--model_config={self.world}/llava_config", f"--out_dir={out}",
            f"--steps={p['vision_steps']}", f"--seed={self.seed}"]])
        return out

    def sft(self, init):
        p, out = self.p, self.path("sft")
        self.stage("sft", os.path.join(out, "model", "model.safetensors"), [[
            "train.py", "--mode=sft", f"--data={self.world}/sft.json", f"--init_from={init}",
            f"--tokenizer={self.world}", f"--out_dir={out}", f"--max_steps={p['sft_steps']}",
            f"--batch_size={p['sft_batch']}", "--micro_batch_size=" + str(p["sft_batch"]), "--lr=2e-3",
            "--lora_rank=0", "--train_vision=False", f"--warmup_steps={min(50, p['sft_steps'] // 5)}",
            "--log_every=100", f"--seed={self.seed}", "--template=llava_hf"]])
        return os.path.join(out, "model")

    def rules_input(self):
        """POVID's source data: the training conversations with their caption and existence questions ("Is there a
        fork in the image?"), as POVID's come from instruction data with QA turns, not captions alone. The colour and
        count questions are left out: their pairs cost recall (README, "How the settings were chosen")."""
        out = self.path("pairs", "rules_input.json")
        if not os.path.exists(out):
            from train_state import write_atomic
            with open(f"{self.world}/train.json") as f:
                convs = json.load(f)
            for c in convs:
                t = c["conversations"]
                c["conversations"] = [x for k in range(0, len(t), 2) if k == 0 or t[k]["value"].startswith("Is there")
                                      for x in t[k:k + 2]]
                c["image"] = os.path.relpath(os.path.join(self.world, c["image"]), os.path.dirname(out))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            write_atomic(out, json.dumps(convs))
        return out

    def rules_pairs(self):
        """POVID's pairs: every turn of rules_input() (the caption, its existence questions); `rules` makes the wrong
        answer (an absent object inserted or swapped in, a present one left out, an attribute, relation or count
        changed; "No." -> "Yes." for an absent object, "Yes." -> "No." for a drawn one)."""
        return self._rules("rules", self.rules_input(), "rules.jsonl", "--all-turns")

    def clip_negatives(self):
        """The CLIP's hard negatives: the training captions rewritten by `rules` with every kind but omissions. A
        caption that leaves an object out is still true of the image, so it is no negative for image-text matching
        (train_clip.py would skip those rows anyway); without them the other kinds fill their place."""
        from hallucinate_rules import DEFAULT_MIX
        return self._rules("clip-negatives", f"{self.world}/train.json", "clip_negatives.jsonl", "--mix",
                           ",".join(f"{k}={w}" for k, w in DEFAULT_MIX.items() if k != "omit"))

    def _rules(self, name, source, out_name, *extra):
        """One `hallucinate.py rules` stage over `source`, against the world's annotations and vocabulary -> its
        pairs/ file."""
        out = self.path("pairs", out_name)
        self.stage(name, out, [[
            "hallucinate.py", "rules", "--input", source, "--annotations", f"{self.world}/annotations.json",
            "--vocab", f"{self.world}/vocab.json", "--output", out, "--seed", "0", *extra]])
        return out

    def chosen_as_sft(self, pairs):
        """The NLL-only control's data: the preference file's chosen answers as SFT conversations (same prompts,
        same images; the relative image paths stay valid, the file sits next to `pairs`)."""
        out = self.path("pairs", "chosen_sft.json")
        if not os.path.exists(out):
            from train_data import Skips, read_records  # malformed lines are named, not silently dropped
            from train_state import write_atomic
            conv = [{"id": r["id"], "image": r["image"], "conversations": [
                {"from": "human", "value": r["prompt"]}, {"from": "gpt", "value": r["chosen"]}]}
                for _, r in read_records(pairs, Skips())]
            write_atomic(out, json.dumps(conv))
        return out

    def clip(self, negatives):
        """The tiny CLIP, in the background: it needs only the world and the rules pairs (the captions' wrong
        versions are its hard negatives), so it trains while the tower and the SFT run."""
        p, out = self.p, self.path("clip")
        self.stage("clip", os.path.join(out, "model.safetensors"), [[
            "toy/train_clip.py", f"--data={self.world}/train.json", f"--clip_config={self.world}/clip_config",
            f"--out_dir={out}", f"--negatives={negatives}", f"--steps={p['clip_steps']}"]], background=True)
        return out

    def dpo(self, name, init, data, mode="dpo", extra=(), steps=None, background=False):
        p, out = self.p, self.path(name)
        self.stage(name, os.path.join(out, "model", "model.safetensors"),
                   [["train.py", f"--mode={mode}", f"--data={data}", f"--init_from={init}", f"--out_dir={out}",
                     f"--max_steps={steps or p['dpo_steps']}", f"--batch_size={p['dpo_batch']}",
                     f"--micro_batch_size={p['dpo_batch']}", "--template=llava_hf", *DPO_ARGS, *extra]],
                   background=background)
        return os.path.join(out, "model")

    def clip_pairs(self, sft, clip):
        """CLIP-DPO's ranked caption pairs, in the background (POVID's stage 1 trains meanwhile)."""
        self.join()  # the CLIP, if it is still training
        p, out = self.p, self.path("pairs", "clip_rank.jsonl")
        self.stage("clip-rank", out, [[
            "hallucinate.py", "clip-rank", "--checkpoint", sft, "--clip", clip, "--input",
            f"{self.world}/train.json", "--output", out, "--samples", str(p["clip_samples"]), "--template", "llava_hf",
            "--limit", str(p["clip_images"]),
            # score each object phrase and keep the worst: with sentence means the tiny CLIP ordered only 31% of
            # the pairs right by hallucinated objects (19% wrong); phrase minima: 37% right, 13% wrong
            "--unit", "phrase", "--pool", "min",
            # no absolute floor: the tiny CLIP's scores are uncalibrated (CLIP-DPO's threshold is for a real CLIP,
            # and minima of phrase scores sit lower than sentence means); margin and length ratio still apply
            "--min-score", "-100",
            # rejected answers at most 1.2x the chosen one's length in words (1.5 before): CLIP-DPO's length filter,
            # tightened because the longer rejected answers teach "say less" (chosen on validation, with the steps)
            "--max-len-ratio", "1.2"]], background=True)
        return out

    def clip_dpo_data(self, ranked, rules):
        """CLIP-DPO's two branches in one file: the CLIP-ranked caption pairs, and for each ranked image one question
        with a correct and a wrong answer (the paper has a text-only LLM write them from the SFT data; here the
        first QA turn of the image's `rules` pairs, an existence question). Unlike the paper's, the QA pairs are not
        CLIP-filtered: the tiny CLIP scores captions, not yes/no statements."""
        out = self.path("pairs", "clip_dpo.jsonl")
        if os.path.exists(out):
            return out
        self.join()  # the ranking, if it is still running
        from train_data import Skips, read_records
        from train_state import write_atomic
        rows = [r for _, r in read_records(ranked, Skips())]
        images, qa = {r["image"] for r in rows}, {}
        for _, r in read_records(rules, Skips()):  # both files sit in pairs/, so their image paths compare
            if r["image"] in images and r["image"] not in qa and "<image>" not in r["prompt"]:
                qa[r["image"]] = r  # the first QA turn (the caption turn is the one that carries <image>)
        write_atomic(out, "".join(json.dumps(r) + "\n" for r in rows + list(qa.values())))
        print(f"[clip-dpo data] {len(rows)} ranked caption pairs + {len(qa)} QA pairs -> {out}", flush=True)
        return out

    def questions(self):
        qdir = self.path("questions" + self.suffix)
        os.makedirs(qdir, exist_ok=True)
        with open(f"{self.world}/{self.split}_questions.jsonl") as f:  # the world's own caption prompt
            qs = [json.loads(x) for x in f if x.strip()]
        with open(f"{qdir}/chair.jsonl", "w") as f:
            for q in qs:
                q["image"] = os.path.abspath(os.path.join(self.world, q["image"]))
                f.write(json.dumps(q) + "\n")
        cmds = []
        for split in ("random", "popular", "adversarial"):
            cmds.append(["eval.py", "pope-build", "--annotations", f"{self.world}/{self.split}_annotations.json",
                         "--split", split, "--num-per-image", str(self.p["pope_per_image"]), "--seed", "0",
                         "--output", f"{qdir}/pope_{split}.jsonl"])
        self.stage("questions" + self.suffix, f"{qdir}/pope_adversarial.jsonl", cmds)
        return qdir

    def evaluate(self, name, ckpt, qdir, background=False):
        """CHAIR and POPE of one run (in the background: join() before reading them)."""
        run_dir = self.path("runs" + self.suffix, name)
        cmds = [["eval.py", "generate", "--checkpoint", ckpt, "--questions", f"{qdir}/chair.jsonl",
                 "--output", f"{run_dir}/chair_answers.jsonl", "--batch-size", "64", "--max-new-tokens", "48",
                 "--template", "llava_hf"],
                ["eval.py", "chair", "--answers", f"{run_dir}/chair_answers.jsonl", "--annotations",
                 f"{self.world}/{self.split}_annotations.json", "--out", f"{run_dir}/chair.json"]]
        for split in ("random", "popular", "adversarial"):
            cmds += [["eval.py", "generate", "--checkpoint", ckpt, "--questions", f"{qdir}/pope_{split}.jsonl",
                      "--output", f"{run_dir}/pope_{split}_answers.jsonl", "--batch-size", "64",
                      "--max-new-tokens", "4", "--template", "llava_hf"],
                     ["eval.py", "pope", "--answers", f"{run_dir}/pope_{split}_answers.jsonl", "--questions",
                      f"{qdir}/pope_{split}.jsonl", "--out", f"{run_dir}/pope_{split}.json"]]
        self.stage(f"eval{self.suffix} {name}", f"{run_dir}/pope_adversarial.json", cmds, background=background)
        return run_dir


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
    qdir = pl.questions()
    rules = pl.rules_pairs()
    clip = pl.clip(pl.clip_negatives())
    sft = pl.sft(pl.vision())
    bg = dict(background=True)
    ranked = pl.clip_pairs(sft, clip)
    ckpt = {"baseline": sft, "povid_stage1": pl.dpo("povid_stage1", sft, rules, steps=pl.p["stage1_steps"])}
    ckpt["noise_only"] = pl.dpo("noise_only", sft, rules, mode="povid", extra=[
        "--noise_t=500", "--povid_weight_injected=0.0", "--povid_weight_noise=1.0"], **bg)
    ckpt["povid"] = pl.dpo("povid", ckpt["povid_stage1"], rules, mode="povid",
                           extra=["--noise_t=500", *POVID_WEIGHTS])
    # the control for the NLL term: the same LoRA trained on POVID's chosen answers alone, as long as both stages (the
    # DPO flags in DPO_ARGS are unused by --mode=sft; its NLL is per token over the batch, the term's per answer)
    ckpt["nll_only"] = pl.dpo("nll_only", sft, pl.chosen_as_sft(rules), mode="sft",
                              steps=pl.p["stage1_steps"] + pl.p["dpo_steps"], **bg)
    sweep = [t for t in pl.p["sweep"] if t != 500]
    if sweep:
        ckpt[f"povid_t{sweep[0]}"] = pl.dpo(f"povid_t{sweep[0]}", ckpt["povid_stage1"], rules, mode="povid",
                                            extra=[f"--noise_t={sweep[0]}", *POVID_WEIGHTS])
    ckpt["clip_dpo"] = pl.dpo("clip_dpo", sft, pl.clip_dpo_data(ranked, rules), mode="clip-dpo",
                              steps=pl.p["clip_dpo_steps"], **bg)
    for t in sweep[1:]:
        ckpt[f"povid_t{t}"] = pl.dpo(f"povid_t{t}", ckpt["povid_stage1"], rules, mode="povid",
                                     extra=[f"--noise_t={t}", *POVID_WEIGHTS])
    pl.join()
    names = ["baseline", "povid_stage1", "povid", "noise_only", "nll_only", "clip_dpo",
             *[f"povid_t{t}" for t in sweep]]  # the report's row order
    run_dirs = {name: pl.evaluate(name, ckpt[name], qdir, background=k % 2 == 0) for k, name in enumerate(names)}
    pl.join()
    return run_dirs


if __name__ == "__main__":
    main()
