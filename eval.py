"""Hallucination evaluation: answer a question file with a checkpoint, then score CHAIR (evals/chair.py), POPE
(evals/pope.py) and MMHal-Bench (evals/mmhal.py, an LLM judge over the chat API), and tabulate runs. File formats are in
evals/files.py (ours, POPE's and LLaVA's question files) and the benchmark modules; the protocols in recipes/eval.toml.

    python eval.py generate  --checkpoint CKPT --questions Q --output RUN/answers.jsonl [--image-root DIR]
                             [--recipe recipes/eval.toml:chair|pope|mmhal] [--vision-tower CLIP_DIR] [--shard I/N]
    python eval.py chair-gt  --instances instances_val2014.json --captions captions_val2014.json --images-dir val2014
                             --synonyms synonyms.txt --num-images 500 --seed 0 --output DIR [--sample-ids IDS.txt]
    python eval.py chair     --answers A.jsonl --annotations DIR/chair_gt.json [--out RUN/chair.json]
    python eval.py pope      --answers A.jsonl --questions coco_pope_random.json [--parser official|povid]
                             [--label-dir POPE/coco (for LLaVA's llava_pope_test.jsonl)] [--out RUN/pope_{split}.json]
    python eval.py mmhal     --questions response_template.json --answers A.jsonl --judge-model gpt-4-0314
                             [--judge-template LLaVA-RLHF/MMHal-Bench-eval/eval_gpt4.py] --out RUN/mmhal.json
    python eval.py report    RUN_DIR... [--out DIR]     # DIR/report.md + DIR/report.json
    python eval.py chair-questions --annotations GT.json --output Q.jsonl   # our own GT files (the toy world)
    python eval.py pope-build --annotations GT.json --split random|popular|adversarial --output Q.jsonl

`generate` is resumable (answers already in --output are kept) and writes one JSON line per question: the question's
fields, "prompt" (what the model was asked), "text" (the answer), "model" and "gen" (template, decoding, suffix, image
aspect ratio, recipe): scoring copies the distinct "gen" values into the metrics JSON as "protocol", since numbers
are only comparable under the same protocol. Defaults: model.tokenizer.DEFAULT_TEMPLATE (vicuna_v1, LLaVA-1.5's
training and benchmark template, every command's default), CUDA + bfloat16 with a GPU (else CPU + float32),
pad-to-square when the checkpoint's config says image_aspect_ratio = "pad" (--image-aspect-ratio overrides), 128 new
tokens; on MMHal-Bench's template, LLaVA-RLHF's protocol: pad-to-square and up to 1024 new tokens.
--recipe FILE:SECTION sets the defaults of whichever subcommand runs from that section (keys another eval.py
subcommand takes are left to it; a key none takes is an error); the command line still wins.

Metrics JSON (each scoring command): {"kind": "chair"|"pope"|"mmhal", "metrics": {...}, inputs...}. `report` reads
every RUN_DIR/*.json with a "kind"; its POPE F1 mean is the mean of the three splits' F1 (LLaVA's single "POPE"
number), shown only when all three were scored. Rates are fractions in JSON, percent in report.md.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time

import recipes
from chat_api import JsonlAppender, resume_jsonl
from evals.chair import Synonyms, chair_scores, coco_ground_truth, sample_image_ids, write_chair_gt
from evals.files import (check_images, first_char, load_annotations, question_records, read_json, read_jsonl,
                       read_jsonl_lines, write_json, write_jsonl, write_text)
from evals.mmhal import fill_template, judged_records, make_judge, mmhal_judge, read_template, template_questions
from evals.pope import PARSER_NOTES, PARSERS, SPLITS, build_pope_questions, labels_for_questions, parse_yes_no, \
    pope_metrics
from model.tokenizer import DEFAULT_TEMPLATE

__all__ = ["chair_scores", "parse_yes_no", "pope_metrics", "build_pope_questions", "mmhal_judge", "load_annotations",
           "collect_run", "write_report"]
log = logging.getLogger("povid.eval")


# ---------------------------------------------------------------------------------------------- generate
def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def cmd_generate(a) -> None:
    if first_char(a.questions) == "[":  # a JSON list: MMHal-Bench's response template
        qs = template_questions(a.questions, a.image_root, a.short_answer_suffix)
        # LLaVA-RLHF's protocol unless told otherwise: long answers, pad-to-square (temperature 0, no suffix: as is)
        a.max_new_tokens = 1024 if a.max_new_tokens is None else a.max_new_tokens
        a.image_aspect_ratio = a.image_aspect_ratio or "pad"
    else:
        qs = question_records(a.questions, a.image_root, a.short_answer_suffix)
    a.max_new_tokens = 128 if a.max_new_tokens is None else a.max_new_tokens  # LLaVA's model_vqa default
    if a.shard:  # every N-th question from the I-th: one process per GPU, answers concatenated afterwards
        i, n = (int(x) for x in a.shard.split("/"))
        if not 0 <= i < n:
            raise ValueError(f"--shard {a.shard}: expected I/N with 0 <= I < N")
        qs = qs[i::n]
    done = {str(r["question_id"]) for r in resume_jsonl(a.output, "question_id")}
    todo = [q for q in qs if str(q["question_id"]) not in done]
    print(f"generate: {len(qs)} questions, {len(qs) - len(todo)} already answered in {a.output}, "
          f"{len(todo)} to go", file=sys.stderr)
    if todo:
        check_images(todo, "" if a.image_root else "; pass --image-root, the folder the file names are in")
        _generate(a, todo)
    if a.filled_template:
        answers = {str(r["question_id"]): r["text"] for r in resume_jsonl(a.output, "question_id")}
        write_json(a.filled_template, fill_template(read_template(a.questions), answers))
        print(f"generate: the template with model_answer filled in -> {a.filled_template}", file=sys.stderr)


def _generate(a, todo: list[dict]) -> None:
    import torch
    from model import Llava, Tokenizer, load_image
    from model.tokenizer import pad_sequences

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = a.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    model = Llava.from_pretrained(a.checkpoint, dtype=dtype, device=device, vision_tower=a.vision_tower).eval()
    cfg = model.config
    # a liuhaotian tokenizer has no "<image>" token: its model takes the id from the config (vocab size)
    tok = Tokenizer.from_pretrained(a.tokenizer or a.checkpoint,
                                    image_token_id=cfg.image_token_id if a.vision_tower else None)
    pad = tok.pad_id if tok.pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None
                                                     else tok.eos_id)
    aspect = a.image_aspect_ratio or ("pad" if cfg.image_aspect_ratio == "pad" else "square")
    template = a.template or DEFAULT_TEMPLATE
    gen = torch.Generator(device=device).manual_seed(a.seed)
    # recorded with every answer: CHAIR/POPE numbers are only comparable under the same protocol (the batch size
    # too when sampling: it decides which random numbers each answer gets)
    settings = {"template": template, "temperature": a.temperature, "top_p": a.top_p,
                "max_new_tokens": a.max_new_tokens, "seed": a.seed, "dtype": dtype_name, "image_aspect_ratio": aspect,
                "batch_size": a.batch_size}
    if a.recipe:
        settings["recipe"] = a.recipe
    print(f"generate: {a.checkpoint} on {device} ({dtype_name}), template {template}, images {aspect}",
          file=sys.stderr)
    start, last, n = time.time(), 0.0, 0
    with JsonlAppender(a.output) as out:
        for b in range(0, len(todo), a.batch_size):
            batch = todo[b:b + a.batch_size]
            prompts = [tok.encode_prompt(q["prompt"], cfg.num_image_tokens, template=template) for q in batch]
            input_ids, mask = pad_sequences(prompts, pad, side="left")  # (B, T) each, left-padded
            px = torch.stack([load_image(q["image_file"], cfg.image_size, pad=aspect == "pad")  # (B, 3, S, S)
                              for q in batch])
            new = model.generate(input_ids.to(device), px.to(device, dtype), mask.to(device),
                                 max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                                 eos_token_id=tok.eos_id, pad_token_id=pad, generator=gen)  # (B, N)
            for q, row in zip(batch, new.tolist()):
                if tok.eos_id in row:
                    row = row[:row.index(tok.eos_id)]
                out.write({**q["answer_base"], "text": tok.decode(row, skip_special_tokens=True).strip(),
                           "model": a.checkpoint, "gen": {**settings, "suffix": q["suffix"]}})
            n += len(batch)
            if time.time() - last > 10 or n == len(todo):
                last, el = time.time(), time.time() - start
                print(f"generate: {n}/{len(todo)} ({100 * n / len(todo):.0f}%), {n / el:.2f} answers/s, "
                      f"elapsed {_fmt_s(el)}, ETA {_fmt_s(el / n * (len(todo) - n))}", file=sys.stderr)


def protocol(answers: list[dict]) -> dict:
    """Which checkpoints, prompts and decoding settings produced the scored answers (distinct values, a few)."""
    out = {}
    for key in ("model", "prompt", "gen"):
        seen = []
        for r in answers:
            if key in r and r[key] not in seen:
                seen.append(r[key])
        out[key] = seen[:5] + ([f"... {len(seen) - 5} more"] if len(seen) > 5 else [])
    return out


# ---------------------------------------------------------------------------------------------- CHAIR
def _read_ids(path: str) -> list[int]:
    ids = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                try:
                    ids.append(int(line))
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: not a COCO image id: {line!r}") from None
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: an image id appears twice")
    return ids


def cmd_chair_gt(a) -> None:
    for name, paths in (("--instances", a.instances), ("--captions", a.captions)):
        if len(set(map(os.path.abspath, paths))) != len(paths):
            raise ValueError(f"{name}: a file is given twice ({', '.join(paths)})")
    syn = Synonyms.from_file(a.synonyms)
    instances = {p: read_json(p) for p in a.instances}
    captions = {p: read_json(p) for p in a.captions}

    def choose(images):
        if a.sample_ids is None:
            return sample_image_ids(images, a.num_images, a.seed)
        ids = _read_ids(a.sample_ids)
        unknown = [i for i in ids if i not in images]
        if unknown:
            raise ValueError(f"{a.sample_ids}: {len(unknown)} ids are not in {a.instances[0]}, e.g. {unknown[:5]}")
        return sorted(ids)

    gt, stats = coco_ground_truth(instances, captions, syn, choose)
    sampled = "ids from " + a.sample_ids if a.sample_ids else \
        f"random.Random({a.seed}).sample(sorted ids, {a.num_images}), sorted"
    write_chair_gt(a.output, gt, a.images_dir, a.prompt, a.synonyms,
                   {"instances": a.instances, "captions": a.captions, "synonyms": a.synonyms,
                    "images_dir": a.images_dir, "sample": sampled, "prompt": a.prompt, "stats": stats})
    print(f"chair-gt: {stats['images']} images ({sampled}), {stats['objects_per_image']:.2f} objects per image "
          f"({stats['objects_only_from_captions']} only from captions); skipped: "
          f"{stats['skipped_instance_annotations_unknown_image']} instance annotations and "
          f"{stats['skipped_captions_unknown_image']} captions of unlisted images; "
          f"{stats['images_without_captions']} images without captions -> {a.output}/{{sample_ids.txt, "
          f"chair_gt.json, chair_questions.jsonl, synonyms.txt, chair_gt_info.json}}", file=sys.stderr)


def cmd_chair_questions(a) -> None:
    ann = load_annotations(a.annotations)
    qs = []
    for image_id, rec in ann.items():
        if "image" not in rec:
            raise ValueError(f"{a.annotations}: image {image_id!r} has no 'image' path")
        qs.append({"question_id": image_id, "image_id": image_id, "prompt": a.prompt,
                   "image": os.path.relpath(rec["image"], os.path.dirname(os.path.abspath(a.output)))})
    write_jsonl(a.output, qs)
    print(f"chair-questions: {len(qs)} questions -> {a.output}", file=sys.stderr)


def cmd_chair(a) -> dict:
    answers = read_jsonl(a.answers, required=("question_id", "text"))
    captions = {}
    for i, r in enumerate(answers, 1):
        cid = str(r.get("image_id", r["question_id"]))
        if cid in captions:
            raise ValueError(f"{a.answers}: answer {i}: a second caption for image {cid!r}")
        captions[cid] = r["text"]
    ann = load_annotations(a.annotations)
    if a.synonyms is None:
        a.synonyms = os.path.join(os.path.dirname(os.path.abspath(a.annotations)), "synonyms.txt")
        if not os.path.exists(a.synonyms):
            raise FileNotFoundError(f"no --synonyms given and no {a.synonyms} next to the annotations")
    scores = chair_scores(captions, {k: v["objects"] for k, v in ann.items()}, Synonyms.from_file(a.synonyms))
    per_caption = scores.pop("per_caption")
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.answers)), "chair.json")
    write_json(out, {"kind": "chair", "answers": a.answers, "annotations": a.annotations, "synonyms": a.synonyms,
                     "scorer": "povid evals/chair.py (own singulariser, see its docstring)",
                     "protocol": protocol(answers), "metrics": scores, "per_caption": per_caption})
    print(f"CHAIR_s {100 * scores['chair_s']:.1f}  CHAIR_i {100 * scores['chair_i']:.1f}  recall "
          f"{100 * scores['recall']:.1f}  len {scores['length']:.1f}  ({scores['n_captions']} captions) -> {out}")
    return scores


# ---------------------------------------------------------------------------------------------- POPE
def cmd_pope_build(a) -> None:
    ann = load_annotations(a.annotations)
    qs, stats = build_pope_questions(ann, a.split, a.num_per_image, a.seed, a.num_images, a.suffix)
    out_dir = os.path.dirname(os.path.abspath(a.output))
    for q in qs:
        if "image" not in q:
            raise ValueError(f"{a.annotations}: image {q['image_id']!r} has no 'image' path")
        q["image"] = os.path.relpath(q["image"], out_dir)
    write_jsonl(a.output, qs)
    print(f"pope-build {a.split}: {json.dumps(stats)} -> {a.output}", file=sys.stderr)


def cmd_pope(a) -> dict:
    lines = read_jsonl_lines(a.questions, required=("question_id",), key="question_id")
    labels = labels_for_questions([(f"{a.questions}:{n}", q) for n, q in lines], a.questions, a.label_dir, a.split)
    # official question files (no "prompt" of ours): the official parser, so numbers compare with published ones
    parser = a.parser or ("povid" if all("prompt" in q for _, q in lines) else "official")
    answers = read_jsonl(a.answers, required=("question_id", "text"))
    seen, known = set(), {k for lab in labels.values() for k in lab}
    for i, r in enumerate(answers, 1):
        k = str(r["question_id"])
        if k in seen:
            raise ValueError(f"{a.answers}: answer {i}: question_id {r['question_id']!r} appears twice")
        if k not in known:
            raise ValueError(f"{a.answers}: answer {i}: question_id {r['question_id']!r} is not in {a.questions}")
        seen.add(k)
    out_tpl = a.out or os.path.join(os.path.dirname(os.path.abspath(a.answers)), "pope_{split}.json")
    if len(labels) > 1 and "{split}" not in out_tpl:
        raise ValueError(f"{a.questions} holds {len(labels)} splits: --out needs a '{{split}}' in its name")
    results = {}
    for split, lab in labels.items():
        mine = [r for r in answers if str(r["question_id"]) in lab]
        m = pope_metrics([(r["question_id"], r["text"]) for r in mine], lab, parser=parser)
        out = out_tpl.format(split=split)
        write_json(out, {"kind": "pope", "split": split, "parser": PARSER_NOTES[parser], "answers": a.answers,
                         "questions": a.questions, "label_dir": a.label_dir, "protocol": protocol(mine),
                         "metrics": m})
        print(f"POPE {split} ({parser} parser): acc {100 * m['accuracy']:.1f}  P {100 * m['precision']:.1f}  "
              f"R {100 * m['recall']:.1f}  F1 {100 * m['f1']:.1f}  yes {100 * m['yes_ratio']:.1f}  "
              f"({m['n']} questions) -> {out}")
        results[split] = m
    if all(s in results for s in SPLITS):
        print(f"POPE F1 mean of the 3 splits (LLaVA's POPE number): "
              f"{100 * sum(results[s]['f1'] for s in SPLITS) / 3:.1f}")
    return results[next(iter(results))] if len(results) == 1 else results


# ---------------------------------------------------------------------------------------------- MMHal-Bench
def cmd_mmhal(a) -> dict:
    answer_recs = read_jsonl(a.answers, ("question_id", "text"), "question_id") if a.answers else []
    records = judged_records(a.questions, {str(r["question_id"]): r["text"] for r in answer_recs}
                             if a.answers else None)
    judge = make_judge(a.judge_template)
    judge_log = a.judge_log or os.path.splitext(a.out)[0] + "_judge.jsonl"
    m = mmhal_judge(records, a.judge_model, judge_log, judge, workers=a.workers)
    write_json(a.out, {"kind": "mmhal", "judge_model": a.judge_model,
                       "judge_template": {k: judge[k] for k in ("name", "file", "sha256")},
                       "questions": a.questions, "answers": a.answers, "judge_log": judge_log,
                       "protocol": protocol(answer_recs), "metrics": m})
    if m["n_failed"]:
        log.warning("mmhal: %d of %d questions not judged (API failures); run again to finish them",
                    m["n_failed"], m["n"])
    if not m["full_benchmark"]:
        log.warning("mmhal: %d questions, not MMHal-Bench's %d: not comparable with published scores", m["n"], 96)
    score = "n/a" if m["score"] is None else f"{m['score']:.2f}"
    rate = "n/a" if m["hallucination_rate"] is None else f"{m['hallucination_rate']:.2f}"
    types = ",".join("n/a" if v is None else f"{v:.2f}" for v in m["per_type_score"].values())
    print(f"MMHal ({a.judge_model}, {judge['name']} judge template): score {score}  hallucination rate {rate}  "
          f"per type ({','.join(m['per_type_score'])}) {types}; judged {m['n_judged']}/{m['n']}, no rating "
          f"{m['n_no_rating']}, several ratings {m['n_several_ratings']}, failed {m['n_failed']} -> {a.out}")
    return m


# ---------------------------------------------------------------------------------------------- report
def collect_run(run_dir: str) -> dict:
    run: dict = {"run": run_dir, "chair": None, "pope": {}, "mmhal": None, "pope_parser": {}, "mmhal_judge": None}
    origin: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "*.json"))):
        if os.path.basename(path).startswith("report."):
            continue
        d = read_json(path)
        kind = d.get("kind") if isinstance(d, dict) else None
        if kind not in ("chair", "pope", "mmhal"):
            continue  # not a metrics file (e.g. a config)
        slot = f"pope_{d.get('split')}" if kind == "pope" else kind
        if slot in origin:
            raise ValueError(f"{run_dir}: both {origin[slot]} and {path} hold {slot} metrics")
        origin[slot] = path
        if kind == "pope":
            run["pope"][d.get("split") or "all"] = d["metrics"]
            if d.get("parser"):
                run["pope_parser"][d.get("split") or "all"] = d["parser"]
        else:
            run[kind] = d["metrics"]
            if kind == "mmhal":
                run["mmhal_judge"] = {"model": d.get("judge_model"), "template": d.get("judge_template")}
    if not origin:
        raise ValueError(f"{run_dir}: no metrics JSON (chair/pope/mmhal) found")
    return run


def write_report(run_dirs: list[str], out_dir: str) -> str:
    runs = [collect_run(d) for d in run_dirs]
    splits = [s for s in (*SPLITS, "all") if any(s in r["pope"] for r in runs)]

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    head = ["run", "CHAIR_s", "CHAIR_i", "recall", "len"]
    for s in splits:
        head += [f"POPE-{s} acc", "F1", "yes"]
    mean = all(s in splits for s in SPLITS)
    if mean:
        head.append("POPE F1 mean")
    head += ["MMHal score", "MMHal hall."]
    rows, notes = [], []
    for r in runs:
        c, m = r["chair"] or {}, r["mmhal"] or {}
        name = os.path.basename(os.path.normpath(r["run"])) or r["run"]
        row = [name, pct(c.get("chair_s")), pct(c.get("chair_i")), pct(c.get("recall")),
               "–" if not c else f"{c['length']:.1f}"]
        for s in splits:
            p = r["pope"].get(s, {})
            row += [pct(p.get("accuracy")), pct(p.get("f1")), pct(p.get("yes_ratio"))]
        if mean:  # LLaVA's convention: the mean F1 of the three splits, or nothing
            row.append(pct(sum(r["pope"][s]["f1"] for s in SPLITS) / 3) if all(s in r["pope"] for s in SPLITS)
                       else "–")
        row += ["–" if m.get("score") is None else f"{m['score']:.2f}", pct(m.get("hallucination_rate"))]
        rows.append(row)
        parsers = sorted(set(r["pope_parser"].values()))
        if parsers:
            notes.append(f"- {name}: POPE answers read with the {' / '.join(parsers)}")
        if r["mmhal_judge"]:
            t = r["mmhal_judge"]["template"] or {}
            notes.append(f"- {name}: MMHal judged by {r['mmhal_judge']['model']} with the {t.get('name')} template")
    md = ["# Hallucination evaluation", "",
          "CHAIR_s, CHAIR_i, recall, POPE accuracy/F1/yes-ratio and the MMHal hallucination rate are percentages; "
          "len is words per caption; the POPE F1 mean is the mean of the three splits' F1 (LLaVA's POPE number); "
          "the MMHal score is the judge's mean 0-6 rating. – = not measured.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    if notes:
        md += [""] + notes
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "report.md")
    write_text(path, "\n".join(md) + "\n")
    write_json(os.path.join(out_dir, "report.json"), {"runs": runs})
    return path


def cmd_report(a) -> None:
    out = a.out or os.path.commonpath([os.path.dirname(os.path.abspath(d.rstrip("/"))) for d in a.run_dirs])
    path = write_report(a.run_dirs, out)
    with open(path, encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"-> {path} and report.json", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = p.add_subparsers(dest="cmd", required=True)
    subs = {}

    def add(name, fn, help_):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--recipe", default=None, help="FILE[:SECTION] of defaults, e.g. recipes/eval.toml:pope")
        s.set_defaults(fn=fn)
        subs[name] = s
        return s

    g = add("generate", cmd_generate, "answer a question file (resumable)")
    g.add_argument("--checkpoint", required=True)
    g.add_argument("--questions", required=True, help="our JSONL, POPE's / LLaVA's JSONL, or MMHal's template")
    g.add_argument("--output", required=True)
    g.add_argument("--image-root", default=None, help="folder of the images (default: the question file's)")
    g.add_argument("--vision-tower", default=None, help="openai CLIP dir, for a liuhaotian LLaVA-1.5 checkpoint")
    g.add_argument("--tokenizer", default=None, help="dir with tokenizer.json (default: the checkpoint)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=None, help="default: 1024 for MMHal's template, else 128")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--template", default=None, help="vicuna_v1 | llava_hf (default: the project's default)")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    g.add_argument("--image-aspect-ratio", default=None, choices=["pad", "square"],
                   help="pad = LLaVA-1.5's expand-to-square; default: pad for MMHal's template, else the "
                        "checkpoint config's image_aspect_ratio")
    g.add_argument("--short-answer-suffix", default=None, action=argparse.BooleanOptionalAction,
                   help="append LLaVA's '\\nAnswer the question using a single word or phrase.' "
                        "(default: to POPE-style lines only)")
    g.add_argument("--shard", default=None, help="I/N: answer questions I, I+N, I+2N, ... (one process per GPU)")
    g.add_argument("--filled-template", default=None,
                   help="MMHal: write the template with model_answer filled in here, once all are answered")
    t = add("chair-gt", cmd_chair_gt, "CHAIR ground truth + a seeded image sample + questions, from COCO")
    t.add_argument("--instances", action="append", required=True,
                   help="instances_val2014.json (repeatable; the sample comes from the first)")
    t.add_argument("--captions", action="append", required=True, help="captions_val2014.json (repeatable)")
    t.add_argument("--images-dir", required=True, help="the folder of the images (val2014/)")
    t.add_argument("--synonyms", required=True, help="LisaAnne/Hallucination data/synonyms.txt")
    t.add_argument("--num-images", type=int, default=500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--sample-ids", default=None, help="use these ids (one per line) instead of drawing a sample")
    t.add_argument("--prompt", default="Describe this image.")
    t.add_argument("--output", required=True, help="output folder")
    q = add("chair-questions", cmd_chair_questions, "one captioning question per annotated image")
    q.add_argument("--annotations", required=True)
    q.add_argument("--output", required=True)
    q.add_argument("--prompt", default="Describe this image.")
    c = add("chair", cmd_chair, "CHAIR_s / CHAIR_i / recall of captions")
    c.add_argument("--answers", required=True)
    c.add_argument("--annotations", required=True)
    c.add_argument("--synonyms", default=None,
                   help="synonym table, COCO synonyms.txt format (default: synonyms.txt next to the annotations)")
    c.add_argument("--out", default=None, help="metrics JSON (default: chair.json next to the answers)")
    b = add("pope-build", cmd_pope_build, "POPE questions for one split, from our GT files")
    b.add_argument("--annotations", required=True)
    b.add_argument("--split", required=True, choices=SPLITS)
    b.add_argument("--num-per-image", type=int, default=3, help="yes questions per image (as many no)")
    b.add_argument("--num-images", type=int, default=None)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--suffix", default="", help="appended to every prompt")
    b.add_argument("--output", required=True)
    e = add("pope", cmd_pope, "POPE metrics, per split")
    e.add_argument("--answers", required=True)
    e.add_argument("--questions", required=True, help="the file given to generate (it holds or names the labels)")
    e.add_argument("--label-dir", default=None, help="POPE's coco/ folder, for LLaVA's llava_pope_test.jsonl")
    e.add_argument("--split", default=None, help="default: the split field, the file name, or LLaVA's category")
    e.add_argument("--parser", default=None, choices=sorted(PARSERS),
                   help="default: official for POPE's / LLaVA's files, povid for ours")
    e.add_argument("--out", default=None, help="metrics JSON; '{split}' is replaced (default: "
                                               "pope_{split}.json next to the answers)")
    h = add("mmhal", cmd_mmhal, "MMHal-Bench judged through the chat API (OPENAI_BASE_URL, OPENAI_API_KEY)")
    h.add_argument("--questions", required=True, help="response_template.json (or a filled copy)")
    h.add_argument("--answers", default=None, help="generate's answers (default: the template's model_answer)")
    h.add_argument("--judge-model", required=True)
    h.add_argument("--judge-template", default=None,
                   help="LLaVA-RLHF's MMHal-Bench-eval/eval_gpt4.py, for the official judge template")
    h.add_argument("--judge-log", default=None, help="judge replies JSONL (default: <out>_judge.jsonl)")
    h.add_argument("--workers", type=int, default=4)
    h.add_argument("--out", required=True)
    r = add("report", cmd_report, "report.md + report.json over run dirs")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out", default=None, help="output dir (default: the run dirs' common parent)")
    return p, subs


def apply_recipe(argv: list[str], subs: dict[str, argparse.ArgumentParser]) -> None:
    """First pass: find --recipe and the subcommand, set that subcommand's defaults from the recipe's keys it takes.
    A key that no eval.py subcommand takes is an error (a typo must not leave a default in place)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=None)
    spec = pre.parse_known_args(argv)[0].recipe
    cmd = next((x for x in argv if x in subs), None)
    if spec is None or cmd is None:
        return
    values, where = recipes.load(spec)
    dests = {name: {act.dest for act in s._actions} for name, s in subs.items()}
    unknown = sorted(set(values) - set().union(*dests.values()))
    if unknown:
        raise SystemExit(f"recipe {where}: unknown key(s) {', '.join(unknown)}: no eval.py subcommand takes them")
    recipes.apply_values(subs[cmd], {k: v for k, v in values.items() if k in dests[cmd]}, where)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p, subs = build_parser()
    apply_recipe(argv, subs)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a.fn(a)


if __name__ == "__main__":
    main()
