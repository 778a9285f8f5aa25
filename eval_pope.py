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

Answers are read by `parse_yes_no`: the first sentence, "no" when it holds a negation word (no, not, none,
never, nothing, ...) or an n't form ("isn't", "doesn't"). This fixes the official parser, which only looks for the
exact tokens "No"/"no"/"not" and so reads "Not really." and "There isn't one." as yes. An empty answer is "no"
(the model did not say yes) and is counted separately as `n_empty`.

Metrics (`pope_metrics`), "yes" being the positive class: accuracy, precision = TP/(TP+FP),
recall = TP/(TP+FN), F1 = 2PR/(P+R), yes_ratio = predicted yes / N; all fractions; 0.0 where undefined.
Answers are matched to labels by question id, never by position; a missing or repeated id is an error.
"""
from __future__ import annotations

import random
import re
from collections import Counter

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


def _as_bool(v, what: str, qid: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return parse_yes_no(v)
    raise TypeError(f"{what} {qid!r}: expected a bool or text, got {type(v).__name__}")


def pope_metrics(predictions, labels) -> dict:
    """predictions and labels: {question_id: value} or iterables of (question_id, value) pairs. A prediction is a
    bool or the model's text (parsed by parse_yes_no); a label is a bool or "yes"/"no"."""
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
        p = _as_bool(preds[k], "prediction of question", k)
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
