"""The toy demo's preference data: what each DPO run of toy/demo.py trains on, made from the world's training scenes.

    rules_pairs     POVID's pairs: `hallucinate.py rules --all-turns` over the caption and existence-question turns
                    (rules_input) -> pairs/rules.jsonl
    clip_negatives  the tiny CLIP's hard negatives: `rules` over the training captions without omissions
    chosen_as_sft   the NLL-only control's data: POVID's chosen answers as SFT conversations
    clip_rank       CLIP-DPO's ranked caption pairs: `hallucinate.py clip-rank` with the SFT model and the tiny CLIP
    clip_dpo_data   CLIP-DPO's two branches in one file: the ranked captions + one existence question per image

Every function takes the pipeline (toy/demo.py's Pipeline: its world, settings and stage runner), declares its stage
(a command line, or a small Python step run in the pipeline's process) and returns its Output (toy/runner.py).
"""
from __future__ import annotations

import json
import os

from toy.runner import Output
from model.files import write_atomic


def rules_input(pl, world: Output) -> Output:
    """POVID's source data: the training conversations with their caption and existence questions ("Is there a
    fork in the image?"), as POVID's come from instruction data with QA turns, not captions alone. The colour and
    count questions are left out: their pairs cost recall (docs/toy.md)."""
    out = pl.path("pairs", "rules_input.json")

    def write():
        with open(f"{pl.world}/train.json") as f:
            convs = json.load(f)
        for c in convs:
            t = c["conversations"]
            c["conversations"] = [x for k in range(0, len(t), 2) if k == 0 or t[k]["value"].startswith("Is there")
                                  for x in t[k:k + 2]]
            c["image"] = os.path.relpath(os.path.join(pl.world, c["image"]), os.path.dirname(out))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        write_atomic(out, json.dumps(convs))

    pl.stage("rules input", out, inline=write, needs=[world.stage])
    return Output(out, "rules input")


def rules_pairs(pl, world: Output) -> Output:
    """POVID's pairs: every turn of rules_input() (the caption, its existence questions); `rules` makes the wrong
    answer (an absent object inserted or swapped in, a present one left out, an attribute, relation or count
    changed; "No." -> "Yes." for an absent object, "Yes." -> "No." for a drawn one)."""
    return _rules(pl, "rules", rules_input(pl, world), "rules.jsonl", "--all-turns")


def clip_negatives(pl, world: Output) -> Output:
    """The CLIP's hard negatives: the training captions rewritten by `rules` with every kind but omissions. A
    caption that leaves an object out is still true of the image, so it is no negative for image-text matching
    (train_clip.py would skip those rows anyway); without them the other kinds fill their place."""
    from hallucinate_rules import DEFAULT_MIX
    return _rules(pl, "clip-negatives", Output(f"{pl.world}/train.json", world.stage), "clip_negatives.jsonl",
                  "--mix", ",".join(f"{k}={w}" for k, w in DEFAULT_MIX.items() if k != "omit"))


def _rules(pl, name, source: Output, out_name, *extra) -> Output:
    """One `hallucinate.py rules` stage over `source`, against the world's annotations and vocabulary -> its
    pairs/ file."""
    out = pl.path("pairs", out_name)
    pl.stage(name, out, [[
        "hallucinate.py", "rules", "--input", source.path, "--annotations", f"{pl.world}/annotations.json",
        "--vocab", f"{pl.world}/vocab.json", "--output", out, "--seed", "0", *extra]], needs=[source.stage])
    return Output(out, name)


def chosen_as_sft(pl, pairs: Output) -> Output:
    """The NLL-only control's data: the preference file's chosen answers as SFT conversations (same prompts,
    same images; the relative image paths stay valid, the file sits next to `pairs`)."""
    out = pl.path("pairs", "chosen_sft.json")

    def write():
        from train_data import Skips, read_records  # malformed lines are named, not silently dropped
        conv = [{"id": r["id"], "image": r["image"], "conversations": [
            {"from": "human", "value": r["prompt"]}, {"from": "gpt", "value": r["chosen"]}]}
            for _, r in read_records(pairs.path, Skips())]
        write_atomic(out, json.dumps(conv))

    pl.stage("chosen as sft", out, inline=write, needs=[pairs.stage])
    return Output(out, "chosen as sft")


def clip_rank(pl, sft: Output, clip: Output) -> Output:
    """CLIP-DPO's ranked caption pairs: K samples of the SFT model per training image, scored by the tiny CLIP."""
    p, out = pl.p, pl.path("pairs", "clip_rank.jsonl")
    pl.stage("clip-rank", out, [[
        "hallucinate.py", "clip-rank", "--checkpoint", sft.path, "--clip", clip.path, "--input",
        f"{pl.world}/train.json", "--output", out, "--samples", str(p["clip_samples"]), "--template", "llava_hf",
        "--limit", str(p["clip_images"]),
        # score each object phrase and keep the worst: with sentence means the tiny CLIP ordered only 31% of
        # the pairs right by hallucinated objects (19% wrong); phrase minima: 37% right, 13% wrong
        "--unit", "phrase", "--pool", "min",
        # no absolute floor: the tiny CLIP's scores are uncalibrated (CLIP-DPO's threshold is for a real CLIP,
        # and minima of phrase scores sit lower than sentence means); margin and length ratio still apply
        "--min-score", "-100",
        # rejected answers at most 1.2x the chosen one's length in words (1.5 before): CLIP-DPO's length filter,
        # tightened because the longer rejected answers teach "say less"
        "--max-len-ratio", "1.2"]], needs=[sft.stage, clip.stage])
    return Output(out, "clip-rank")


def clip_dpo_data(pl, ranked: Output, rules: Output) -> Output:
    """CLIP-DPO's two branches in one file: the CLIP-ranked caption pairs, and for each ranked image one question
    with a correct and a wrong answer (the paper has a text-only LLM write them from the SFT data; here the
    first QA turn of the image's `rules` pairs, an existence question). Unlike the paper's, the QA pairs are not
    CLIP-filtered: the tiny CLIP scores captions, not yes/no statements."""
    out = pl.path("pairs", "clip_dpo.jsonl")
    pl.stage("clip-dpo data", out, inline=lambda: write_clip_dpo_data(ranked.path, rules.path, out),
             needs=[ranked.stage, rules.stage])
    return Output(out, "clip-dpo data")


def write_clip_dpo_data(ranked, rules, out):
    from train_data import Skips, read_records
    rows = [r for _, r in read_records(ranked, Skips())]
    images, qa = {r["image"] for r in rows}, {}
    for _, r in read_records(rules, Skips()):  # both files sit in pairs/, so their image paths compare
        if r["image"] in images and r["image"] not in qa and "<image>" not in r["prompt"]:
            qa[r["image"]] = r  # the first QA turn (the caption turn is the one that carries <image>)
    write_atomic(out, "".join(json.dumps(r) + "\n" for r in rows + list(qa.values())))
    print(f"[clip-dpo data] {len(rows)} ranked caption pairs + {len(qa)} QA pairs -> {out}", flush=True)
    return out
