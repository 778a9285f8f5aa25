"""POPE: Polling-based Object Probing Evaluation (Li et al., EMNLP 2023, "Evaluating Object Hallucination in Large
Vision-Language Models").

Per image, N objects that are present get a "yes" question and N absent objects a "no" question, with the
template "Is there a/an {object} in the image?". The absent objects define the split:
  random       uniformly drawn from the objects seen anywhere in the annotation set;
  popular      the most frequent objects overall (number of images holding them);
  adversarial  the absent objects that co-occur most with the image's objects: score(o) = sum over the image's
               objects p of the number of images holding both p and o (when fewer than N absent objects
               co-occur at all, the rest are the most frequent ones; counted in the stats).
Ties break by frequency, then by name, so splits are reproducible for a given seed. (The official code pairs
each positive with the object co-occurring most with *it*; summing over the image is the same idea, and it
does not run dry when one positive object has no absent companion.)

Two answer parsers (PARSERS; the metrics JSON names the one used):
  official  `parse_yes_no_official`, the rule of RUCAIBox/POPE evaluate.py, copied unchanged into LLaVA's
            llava/eval/eval_pope.py: keep the text before the first ".", drop commas, split on single spaces; "no"
            when a token is exactly "No", "not" or "no", else "yes" (so "Not really.", "NO", "There isn't one." and
            an empty answer are all yes). LLaVA-1.5's published POPE (85.9) comes from this rule.
  povid     `parse_yes_no`: the first sentence, "no" when it holds a negation word (no, not, none, never,
            nothing, ...) or an n't form, case-insensitive; an empty answer is "no" (the model did not say yes).
            It fixes the official rule's misreadings, which matter for small or chatty models.
`eval.py pope` uses the official rule on the official question files, so that the numbers compare with published
ones (with LLaVA's single-word suffix most answers are a bare "Yes" or "No", where the rules agree), and ours on
files of our own (pope-build, the toy world); --parser picks either. Empty answers are counted as `n_empty`.

Metrics (`pope_metrics`), "yes" being the positive class: accuracy, precision = TP/(TP+FP),
recall = TP/(TP+FN), F1 = 2PR/(P+R), yes_ratio = predicted yes / N; all fractions; 0.0 where undefined.
Answers are matched to labels by question id, never by position; a missing or repeated id is an error.

Official files (`labels_for_questions`): POPE's coco_pope_{split}.json lines carry their own "label". LLaVA-1.5's
llava_pope_test.jsonl lines carry a "category" (the split) instead; LLaVA's eval_pope.py pairs the answers of a
category with the lines of coco/coco_pope_{category}.json by position. We pair the *question* lines of a category
with the label lines by position and check that each pair names the same image and question, so a file of another
POPE version (2910 vs 3000 questions in random) is an error rather than a wrong F1 (POPE issue #17); answers are
then matched by question id.

    python eval.py pope --answers RUN/pope_random_answers.jsonl --questions POPE/output/coco/coco_pope_random.json
    python eval.py pope --answers RUN/answers.jsonl --questions llava_pope_test.jsonl --label-dir POPE/output/coco
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from collections import Counter

from evals.files import load_annotations, protocol, read_jsonl, read_jsonl_lines, write_json, write_jsonl

SPLITS = ("random", "popular", "adversarial")
NEGATIONS = {"no", "not", "none", "nope", "nah", "never", "nothing", "neither", "nor", "cannot",
             # the same n't forms without their apostrophe, as small models and sloppy typists write them
             "isnt", "arent", "wasnt", "werent", "dont", "doesnt", "didnt", "cant", "couldnt", "wont", "wouldnt",
             "hasnt", "havent", "hadnt", "shouldnt", "aint"}


def question_text(obj: str) -> str:
    article = "an" if obj[:1].lower() in "aeiou" else "a"
    return f"Is there {article} {obj} in the image?"


def parse_yes_no(text: str) -> bool:
    """True for yes. First sentence only ("Yes. There is no dog" is yes); any negation word makes it no."""
    text = text.strip().lower().replace("\u2019", "'")
    first = re.split(r"[.!?\n]", text, maxsplit=1)[0]
    words = re.findall(r"[a-z']+", first)
    if not words:
        return False
    return not any(w in NEGATIONS or w.endswith("n't") for w in words)


def parse_yes_no_official(text: str) -> bool:
    """True for yes; the official POPE rule (module docstring), kept bug for bug."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return not ("No" in words or "not" in words or "no" in words)


PARSERS = {"official": parse_yes_no_official, "povid": parse_yes_no}
PARSER_NOTES = {"official": "official: RUCAIBox/POPE evaluate.py = LLaVA llava/eval/eval_pope.py rule",
                "povid": "povid: evals.pope.parse_yes_no (negation words and n't forms, empty = no)"}


def _object_stats(annotations: dict[str, list[str]]):
    freq: Counter = Counter()
    cooc: dict[str, Counter] = {}
    for objs in annotations.values():
        uniq = sorted(set(objs))
        freq.update(uniq)
        for a in uniq:
            row = cooc.setdefault(a, Counter())
            row.update(b for b in uniq if b != a)
    return freq, cooc


def build_pope_questions(annotations: dict, split: str, num_per_image: int = 3, seed: int = 0,
                         num_images: int | None = None, suffix: str = "") -> tuple[list[dict], dict]:
    """Questions for one split. annotations: {image_id: {"objects": [...], "image": path?}} (or {id: [objects]}).

    Images with fewer than `num_per_image` distinct objects, or too few absent objects, are skipped and counted.
    Returns (questions, stats); each question is {question_id, image_id, image?, prompt, question, label,
    object, split}, positives and negatives interleaved per image. `suffix` is appended to the prompt only (e.g.
    LLaVA's "\\nAnswer the question using a single word or phrase.")."""
    if split not in SPLITS:
        raise ValueError(f"unknown POPE split {split!r}; choose from {SPLITS}")
    rng = random.Random(seed)
    ann = {str(k): (v if isinstance(v, dict) else {"objects": v}) for k, v in annotations.items()}
    objects = {k: sorted(set(v["objects"])) for k, v in ann.items()}
    freq, cooc = _object_stats(objects)
    pool = sorted(freq)
    popular = sorted(pool, key=lambda o: (-freq[o], o))
    ids = sorted(ann)
    rng.shuffle(ids)  # which images are used, when num_images limits them
    questions, stats = [], {"images": 0, "skipped_too_few_objects": 0, "skipped_too_few_negatives": 0,
                            "adversarial_without_cooccurrence": 0}
    for image_id in ids:
        if num_images is not None and stats["images"] == num_images:
            break
        present = objects[image_id]
        absent = [o for o in pool if o not in set(present)]
        if len(present) < num_per_image:
            stats["skipped_too_few_objects"] += 1
            continue
        if len(absent) < num_per_image:
            stats["skipped_too_few_negatives"] += 1
            continue
        positives = rng.sample(present, num_per_image)
        if split == "random":
            negatives = rng.sample(absent, num_per_image)
        elif split == "popular":
            negatives = [o for o in popular if o not in set(present)][:num_per_image]
        else:  # the absent objects seen most often together with this image's objects
            score = {o: sum(cooc[p][o] for p in present) for o in absent}
            negatives = sorted(absent, key=lambda o: (-score[o], -freq[o], o))[:num_per_image]
            stats["adversarial_without_cooccurrence"] += sum(score[o] == 0 for o in negatives)
        stats["images"] += 1
        for pos, neg in zip(positives, negatives):
            for obj, label in ((pos, "yes"), (neg, "no")):
                q = question_text(obj)
                rec = {"question_id": len(questions) + 1, "image_id": image_id, "prompt": q + suffix,
                       "question": q, "label": label, "object": obj, "split": split}
                if "image" in ann[image_id]:
                    rec["image"] = ann[image_id]["image"]
                questions.append(rec)
    stats["questions"] = len(questions)
    return questions, stats


def _as_pairs(x, what: str) -> dict[str, object]:
    """{id: value} from a dict or an iterable of (id, value) pairs; a repeated id is an error."""
    items = x.items() if isinstance(x, dict) else x
    out: dict[str, object] = {}
    for qid, v in items:
        k = str(qid)
        if k in out:
            raise ValueError(f"{what}: question id {qid!r} appears twice")
        out[k] = v
    return out


def _as_bool(v, what: str, qid: str, parse) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return parse(v)
    raise TypeError(f"{what} {qid!r}: expected a bool or text, got {type(v).__name__}")


def pope_metrics(predictions, labels, parser: str = "povid") -> dict:
    """predictions and labels: {question_id: value} or iterables of (question_id, value) pairs. A prediction is a
    bool or the model's text (parsed by PARSERS[parser]); a label is a bool or "yes"/"no"."""
    if parser not in PARSERS:
        raise ValueError(f"unknown POPE parser {parser!r}; choose from {', '.join(PARSERS)}")
    parse = PARSERS[parser]
    preds = _as_pairs(predictions, "predictions")
    gold = _as_pairs(labels, "labels")
    missing = [k for k in gold if k not in preds]
    extra = [k for k in preds if k not in gold]
    if missing or extra:
        raise ValueError(f"answers and questions do not match: {len(missing)} question(s) without an answer "
                         f"(e.g. {missing[:5]}), {len(extra)} answer(s) to unknown questions (e.g. {extra[:5]})")
    tp = fp = tn = fn = n_empty = 0
    for k, g in gold.items():
        if isinstance(g, str) and g.strip().lower() not in ("yes", "no"):
            raise ValueError(f"label of question {k!r} is {g!r}, not 'yes' or 'no'")
        y = g if isinstance(g, bool) else g.strip().lower() == "yes"
        p = _as_bool(preds[k], "prediction of question", k, parse)
        n_empty += isinstance(preds[k], str) and not preds[k].strip()
        tp += p and y
        fp += p and not y
        tn += (not p) and (not y)
        fn += (not p) and y
    n = len(gold)
    if n == 0:
        raise ValueError("pope_metrics: no questions")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n, "n": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n_empty": n_empty}


def _split_of_file(path: str) -> str | None:
    m = re.search(r"pope_(random|popular|adversarial)\b", os.path.basename(path))
    return m.group(1) if m else None


def labels_for_questions(questions: list[tuple[str, dict]], path: str, label_dir: str | None,
                         split: str | None = None) -> dict[str, dict[str, str]]:
    """{split: {question_id: "yes"|"no"}} for a question file (module docstring), given as [(where, record)].
    Lines with "label" label themselves (split: `split`, else the lines' "split" field, else the file name
    coco_pope_<split>.json); LLaVA lines with "category" take theirs from label_dir/coco_pope_<category>.json."""
    out: dict[str, dict[str, str]] = {}
    by_cat: dict[str, list[tuple[str, dict]]] = {}
    for where, q in questions:
        if "label" in q:
            s = split or q.get("split") or _split_of_file(path) or "all"
            out.setdefault(s, {})[str(q["question_id"])] = q["label"]
        elif "category" in q:
            by_cat.setdefault(str(q["category"]), []).append((where, q))
        else:
            raise ValueError(f"{where}: no 'label' (POPE line) and no 'category' (LLaVA line): cannot be scored")
    if split and len(by_cat) > 1:
        raise ValueError(f"{path}: holds {len(by_cat)} categories ({', '.join(sorted(by_cat))}); --split would "
                         f"merge them, leave it out")
    if by_cat and label_dir is None:
        raise ValueError(f"{path}: LLaVA-style lines (with 'category') need --label-dir, the folder of POPE's "
                         f"coco_pope_<category>.json label files")
    for cat, qs in by_cat.items():
        lpath = os.path.join(label_dir, f"coco_pope_{cat}.json")
        if not os.path.isfile(lpath):
            raise FileNotFoundError(f"{qs[0][0]}: category {cat!r} has no label file {lpath}")
        lines = []
        with open(lpath, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        lab = json.loads(line)
                    except ValueError as e:
                        raise ValueError(f"{lpath}:{lineno}: not valid JSON ({e})") from None
                    for k in ("image", "text", "label"):
                        if not isinstance(lab, dict) or k not in lab:
                            raise ValueError(f"{lpath}:{lineno}: missing field {k!r}")
                    lines.append((lineno, lab))
        if len(lines) != len(qs):
            raise ValueError(f"{path}: category {cat!r} has {len(qs)} questions but {lpath} has {len(lines)} "
                             f"labels (another POPE version?)")
        for (where, q), (lineno, lab) in zip(qs, lines):
            text = q.get("text", "")
            if q["image"] != lab["image"] or not text.startswith(lab["text"]):
                raise ValueError(f"{where} and {lpath}:{lineno} do not describe the same question "
                                 f"({q['image']!r} {text!r} vs {lab['image']!r} {lab['text']!r})")
            out.setdefault(split or cat, {})[str(q["question_id"])] = lab["label"]
    return out


# ---------------------------------------------------------------------------------------------- commands

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


def _args_pope_build(b: argparse.ArgumentParser) -> None:
    b.add_argument("--annotations", required=True)
    b.add_argument("--split", required=True, choices=SPLITS)
    b.add_argument("--num-per-image", type=int, default=3, help="yes questions per image (as many no)")
    b.add_argument("--num-images", type=int, default=None)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--suffix", default="", help="appended to every prompt")
    b.add_argument("--output", required=True)


def _args_pope(e: argparse.ArgumentParser) -> None:
    e.add_argument("--answers", required=True)
    e.add_argument("--questions", required=True, help="the file given to generate (it holds or names the labels)")
    e.add_argument("--label-dir", default=None, help="POPE's coco/ folder, for LLaVA's llava_pope_test.jsonl")
    e.add_argument("--split", default=None, help="default: the split field, the file name, or LLaVA's category")
    e.add_argument("--parser", default=None, choices=sorted(PARSERS),
                   help="default: official for POPE's / LLaVA's files, povid for ours")
    e.add_argument("--out", default=None, help="metrics JSON; '{split}' is replaced (default: "
                                               "pope_{split}.json next to the answers)")


COMMANDS = {
    "pope-build": ("POPE questions for one split, from our GT files", _args_pope_build, cmd_pope_build),
    "pope": ("POPE metrics, per split", _args_pope, cmd_pope),
}
