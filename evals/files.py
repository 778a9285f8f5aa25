"""The files eval.py reads and writes, apart from each benchmark's own (COCO in evals/chair.py, POPE's label files in
evals/pope.py, MMHal-Bench's template in evals/mmhal.py): strict JSON / JSONL readers that name the file, the line or
record and the field of anything wrong; atomic writers; CHAIR / POPE ground truth; question files for `generate`.

Question files (JSONL; a line's fields decide how it is read, so one reader serves them all):
  ours         {"question_id", "image", "prompt", ...}: what chair-questions, chair-gt and pope-build write.
  POPE         {"question_id", "image", "text", "label"}: RUCAIBox/POPE output/coco/coco_pope_{random,popular,
               adversarial}.json (JSONL despite the name), `image` a bare COCO file name ("COCO_val2014_...jpg").
  LLaVA POPE   {"question_id", "image", "text", "category"}: LLaVA-1.5's llava_pope_test.jsonl (its eval.zip, read by
               llava/eval/model_vqa_loader.py); `category` is the split, `text` already ends with the suffix below.
For the last two, `text` is the question: the answer record keeps it as "question" and holds the model's answer in
"text" (the layout of LLaVA's answer files, so LLaVA's eval_pope.py reads ours too). Images are looked up under
--image-root (default: the question file's folder). The short-answer suffix LLaVA-1.5 appends to POPE questions
("\\nAnswer the question using a single word or phrase.", scripts/v1_5/eval/pope.sh via llava_pope_test.jsonl) is
added by default to POPE-style lines (those with "label" or "category"), never twice, and never to our own lines
unless asked for: a line says what it asks.

Ground truth (GT.json, CHAIR and POPE): {image_id: {"objects": [name, ...], "image": path?, ...}} or a list of
{"id" or "image_id", "objects", "image"?, ...}; ids compared as strings; image paths relative to the file.

    from evals.files import read_jsonl, question_records, write_json
"""
from __future__ import annotations

import json
import os

# the JSON reader and the atomic writers of every evals/ module: model/files.py, the whole project's one copy
from model.files import read_json, write_atomic, write_json, write_jsonl  # noqa: F401

SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."


# ---------------------------------------------------------------------------------------------- JSON helpers
def read_jsonl(path: str, required: tuple[str, ...] = (), key: str | None = None) -> list[dict]:
    """JSON objects of a JSONL file; a bad line, a missing required field or a repeated `key` names the line."""
    return [rec for _, rec in read_jsonl_lines(path, required, key)]


def read_jsonl_lines(path: str, required: tuple[str, ...] = (), key: str | None = None) -> list[tuple[int, dict]]:
    """read_jsonl with each record's line number: [(lineno, record)], for messages that name the line later."""
    out, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            for k in required:
                if k not in rec:
                    raise ValueError(f"{path}:{lineno}: missing field {k!r}")
            if key is not None:
                if str(rec[key]) in seen:
                    raise ValueError(f"{path}:{lineno}: {key} {rec[key]!r} appears twice")
                seen.add(str(rec[key]))
            out.append((lineno, rec))
    return out


def first_char(path: str) -> str:
    """'[' for a JSON list (MMHal's template), '{' for JSONL or a JSON object; '' for an empty file."""
    with open(path, encoding="utf-8") as f:
        while True:
            c = f.read(1)
            if not c or not c.isspace():
                return c


def first_record(path: str) -> dict | None:
    """The first line of a JSONL file as a JSON object, or None (not a file, empty, not JSONL): for telling question
    files apart before reading one whole."""
    if not os.path.isfile(path) or first_char(path) != "{":
        return None
    with open(path, encoding="utf-8") as f:
        try:
            rec = json.loads(f.readline())
        except ValueError:
            return None
    return rec if isinstance(rec, dict) else None


def resolve(base_file: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.abspath(base_file)), path)


# ---------------------------------------------------------------------------------------------- ground truth
def load_annotations(path: str) -> dict[str, dict]:
    """{image_id (str): {"objects": [...], "image": absolute path?, ...}} from either accepted layout."""
    data = read_json(path)
    if isinstance(data, dict):
        pairs = [(k, v, f"key {k!r}") for k, v in data.items()]
    elif isinstance(data, list):
        pairs = []
        for i, v in enumerate(data):
            if not isinstance(v, dict) or ("id" not in v and "image_id" not in v):
                raise ValueError(f"{path}: item {i} has no 'id' or 'image_id'")
            pairs.append((v["image_id"] if "image_id" in v else v["id"], v, f"item {i}"))
    else:
        raise ValueError(f"{path}: expected a JSON object or list, got {type(data).__name__}")
    out: dict[str, dict] = {}
    for k, v, where in pairs:
        if not isinstance(v, dict) or not isinstance(v.get("objects"), list) or \
                not all(isinstance(o, str) for o in v["objects"]):
            raise ValueError(f"{path}: {where}: needs an 'objects' list of strings")
        if str(k) in out:
            raise ValueError(f"{path}: {where}: image id {k!r} appears twice")
        rec = dict(v)
        if "image" in rec:
            rec["image"] = resolve(path, rec["image"])
        out[str(k)] = rec
    return out


# ---------------------------------------------------------------------------------------------- questions
def question_records(path: str, image_root: str | None = None, short_answer_suffix: bool | None = None) -> list[dict]:
    """A JSONL question file (any layout of the module docstring) as generate's work list:
    [{"question_id", "prompt", "image_file" (path to open), "suffix" (what was appended, "" if none),
      "answer_base" (the answer record before "text" / "model" / "gen" are added), "where" ("file:line")}].
    short_answer_suffix: None = on for POPE-style lines only; True / False = on / off for every line."""
    base = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    out = []
    for lineno, rec in read_jsonl_lines(path, required=("question_id", "image"), key="question_id"):
        where = f"{path}:{lineno}"
        if not isinstance(rec["image"], str) or not rec["image"]:
            raise ValueError(f"{where}: field 'image' must be a file name, got {rec['image']!r}")
        if "prompt" in rec:  # ours: the question as the model is asked it
            question, answer_base = rec["prompt"], dict(rec)
            pope_style = False
        elif "text" in rec:  # POPE / LLaVA: `text` is the question; the answer's "text" will be the answer
            question = rec["text"]
            answer_base = {k: v for k, v in rec.items() if k != "text"}
            answer_base["question"] = question
            pope_style = "label" in rec or "category" in rec
        else:
            raise ValueError(f"{where}: no question: needs field 'prompt' (our files) or 'text' (POPE / LLaVA)")
        if not isinstance(question, str):
            raise ValueError(f"{where}: the question must be a string, got {type(question).__name__}")
        add = pope_style if short_answer_suffix is None else short_answer_suffix
        prompt = question + SHORT_ANSWER_SUFFIX if add and not question.endswith(SHORT_ANSWER_SUFFIX) else question
        if prompt != question or "prompt" not in rec:
            answer_base["prompt"] = prompt
        image = rec["image"] if os.path.isabs(rec["image"]) else os.path.join(base, rec["image"])
        out.append({"question_id": rec["question_id"], "prompt": prompt, "image_file": image,
                    "suffix": SHORT_ANSWER_SUFFIX if prompt.endswith(SHORT_ANSWER_SUFFIX) else "",
                    "answer_base": answer_base, "where": where})
    return out


def check_images(records: list[dict], hint: str = "") -> None:
    """Every image a run will open exists, checked before a model is loaded; the first few missing ones are named
    with their record."""
    missing = [r for r in records if r.get("image_bytes") is None and not os.path.isfile(r["image_file"])]
    if missing:
        shown = "; ".join(f"{r['where']}: {r['image_file']}" for r in missing[:5])
        raise FileNotFoundError(f"{len(missing)} of {len(records)} images not found ({shown}"
                                f"{'; ...' if len(missing) > 5 else ''}){hint}")


# ---------------------------------------------------------------------------------------------- answers
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


def one_protocol(answers: list[dict], where: str, ignore: tuple[str, ...] = ()) -> None:
    """Answers scored together must come from one protocol: lines whose "model" or "gen" (template, decoding,
    suffix, ...) differ are an error, since their numbers do not add up to one score. Keys of "gen" in `ignore` may
    vary (e.g. AMBER's suffix, on its yes/no questions only)."""
    gens = []
    for r in answers:
        gen = r.get("gen")
        key = (r.get("model"), {k: v for k, v in gen.items() if k not in ignore} if isinstance(gen, dict) else gen)
        if key not in gens:
            gens.append(key)
    if len(gens) > 1:
        raise ValueError(f"{where}: answers from {len(gens)} protocols ('model' or 'gen' differs between lines, e.g. "
                         f"{gens[0]} and {gens[1]}); score each protocol's answers separately")
