"""Hallucination evaluation: answer a question file with a checkpoint, then score CHAIR (eval_chair.py), POPE (eval_pope.py)
and MMHal-Bench (an LLM judge over the OpenAI-compatible chat API, chat_api.py), and tabulate runs.

    python eval.py generate  --checkpoint CKPT --questions Q.jsonl --output RUN/answers.jsonl [--batch-size 8]
    python eval.py chair-questions --annotations GT.json --output Q.jsonl [--prompt "Describe this image."]
    python eval.py chair     --answers A.jsonl --annotations GT.json [--synonyms SYN.txt] [--out RUN/chair.json]
    python eval.py pope-build --annotations GT.json --split random|popular|adversarial --num-per-image 3
                              --seed 0 --output Q.jsonl [--suffix "\\nAnswer the question using a single word..."]
    python eval.py pope      --answers A.jsonl --questions Q.jsonl --out RUN/pope_random.json
    python eval.py mmhal     --questions MMHAL.json [--answers A.jsonl] --judge-model gpt-4o --out RUN/mmhal.json
    python eval.py report    RUN_DIR... [--out DIR]     # DIR/report.md + DIR/report.json

File formats (image paths are relative to the file that holds them unless absolute; ids compared as strings):
- Ground-truth annotations (GT.json), for CHAIR and POPE: either {image_id: {"objects": [name, ...], "image":
  path?, ...}} or a list of {"id" or "image_id": ..., "objects": [...], "image": path?, ...}. Object names are
  categories or synonyms of the synonym table (CHAIR); extra keys are ignored.
- Question JSONL: {"question_id", "image", "prompt", ...}. POPE questions add "image_id", "question", "label"
  ("yes"/"no"), "object", "split"; CHAIR questions add "image_id".
- Synonym table (CHAIR): the COCO synonyms.txt format (see eval_chair.py); default: synonyms.txt beside GT.json.
- Answer JSONL (written by `generate`): the question's fields plus "text" (the answer), "model" (checkpoint) and
  "gen" (template and decoding settings; copied into the metrics JSON as "protocol"). CHAIR matches an
  answer to its ground truth by "image_id" when present, else by "question_id"; POPE matches by "question_id".
- MMHal questions: a JSON list (the official MMHal-Bench response template; question_id = list index) or JSONL,
  with "question" or "prompt", "gt_answer", "image_content" (list of facts) or "facts", optional "question_type",
  and "model_answer" unless --answers gives the answers (by question_id).
- Metrics JSON (each scoring command, `--out`): {"kind": "chair"|"pope"|"mmhal", "metrics": {...}, inputs...}.
  `report` reads every RUN_DIR/*.json with a "kind". Rates are fractions in JSON, percent in report.md.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import sys
import time

from eval_chair import Synonyms, chair_scores
from chat_api import ChatClient, ChatError, JsonlAppender, resume_jsonl, run_jsonl_jobs
from eval_pope import SPLITS, build_pope_questions, parse_yes_no, pope_metrics

__all__ = ["chair_scores", "parse_yes_no", "pope_metrics", "build_pope_questions", "mmhal_judge", "parse_rating",
           "load_annotations", "write_report"]
log = logging.getLogger("povid.eval")


# ---------------------------------------------------------------------------------------------- file helpers
def read_jsonl(path: str, required: tuple[str, ...] = (), key: str | None = None) -> list[dict]:
    """JSON objects of a JSONL file; a bad line, a missing required field or a repeated `key` names the line."""
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
            out.append(rec)
    return out


def write_json(path: str, obj) -> None:
    """Atomic: a killed run never leaves half a metrics file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def write_jsonl(path: str, records: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def resolve(base_file: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.abspath(base_file)), path)


def load_annotations(path: str) -> dict[str, dict]:
    """{image_id (str): {"objects": [...], "image": absolute path?, ...}} from either accepted layout."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
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


# ---------------------------------------------------------------------------------------------- generate
def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def cmd_generate(a) -> None:
    import torch
    from model import Llava, Tokenizer, load_image
    from model.tokenizer import pad_sequences

    qs = read_jsonl(a.questions, required=("question_id", "image", "prompt"), key="question_id")
    done = {str(r["question_id"]) for r in resume_jsonl(a.output, "question_id")}
    todo = [q for q in qs if str(q["question_id"]) not in done]
    print(f"generate: {len(qs)} questions, {len(qs) - len(todo)} already answered in {a.output}, "
          f"{len(todo)} to go", file=sys.stderr)
    if not todo:
        return
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[a.dtype]
    model = Llava.from_pretrained(a.checkpoint, dtype=dtype, device=a.device).eval()
    tok = Tokenizer.from_pretrained(a.checkpoint)
    cfg = model.config
    pad = tok.pad_id if tok.pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None
                                                     else tok.eos_id)
    gen = torch.Generator(device=a.device).manual_seed(a.seed)
    # recorded with every answer: CHAIR/POPE numbers are only comparable under the same protocol
    gen_settings = {"template": a.template, "temperature": a.temperature, "top_p": a.top_p,
                    "max_new_tokens": a.max_new_tokens, "seed": a.seed, "dtype": a.dtype}
    start, last, n = time.time(), 0.0, 0
    with JsonlAppender(a.output) as out:
        for b in range(0, len(todo), a.batch_size):
            batch = todo[b:b + a.batch_size]
            prompts = [tok.encode_prompt(q["prompt"], cfg.num_image_tokens, template=a.template) for q in batch]
            input_ids, mask = pad_sequences(prompts, pad, side="left")  # (B, T) each, left-padded
            px = torch.stack([load_image(resolve(a.questions, q["image"]), cfg.image_size,  # (B, 3, S, S)
                                         pad=cfg.image_aspect_ratio == "pad") for q in batch])
            new = model.generate(input_ids.to(a.device), px.to(a.device, dtype), mask.to(a.device),
                                 max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                                 eos_token_id=tok.eos_id, pad_token_id=pad, generator=gen)  # (B, N)
            for q, row in zip(batch, new.tolist()):
                if tok.eos_id in row:
                    row = row[:row.index(tok.eos_id)]
                out.write({**q, "text": tok.decode(row, skip_special_tokens=True).strip(), "model": a.checkpoint,
                           "gen": gen_settings})
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
    write_json(a.out, {"kind": "chair", "answers": a.answers, "annotations": a.annotations,
                       "synonyms": a.synonyms, "scorer": "povid eval_chair.py (own singulariser, see its docstring)",
                       "protocol": protocol(answers), "metrics": scores, "per_caption": per_caption})
    print(f"CHAIR_s {100 * scores['chair_s']:.1f}  CHAIR_i {100 * scores['chair_i']:.1f}  recall "
          f"{100 * scores['recall']:.1f}  len {scores['length']:.1f}  ({scores['n_captions']} captions) -> {a.out}")
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
    qs = read_jsonl(a.questions, required=("question_id", "label"), key="question_id")
    answers = read_jsonl(a.answers, required=("question_id", "text"))
    splits = {q.get("split") for q in qs}
    split = a.split or (splits.pop() if len(splits) == 1 else None)
    m = pope_metrics([(r["question_id"], r["text"]) for r in answers], [(q["question_id"], q["label"]) for q in qs])
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.answers)), f"pope_{split or 'all'}.json")
    write_json(out, {"kind": "pope", "split": split, "answers": a.answers, "questions": a.questions,
                     "protocol": protocol(answers), "metrics": m})
    print(f"POPE {split}: acc {100 * m['accuracy']:.1f}  P {100 * m['precision']:.1f}  R {100 * m['recall']:.1f}  "
          f"F1 {100 * m['f1']:.1f}  yes {100 * m['yes_ratio']:.1f}  ({m['n']} questions) -> {out}")
    return m


# ---------------------------------------------------------------------------------------------- MMHal-Bench
JUDGE_PROMPT = """You are grading an AI assistant's answer to a question about an image. You cannot see the image. \
Instead you get facts about the image that are known to be true, and a reference answer written by a person.

A hallucination is any claim about the image that the facts and the reference answer contradict or do not \
support: objects, attributes, counts, positions, relations, text. Opinions and hedges are not hallucinations. \
Saying that the question cannot be answered is not a hallucination, but it is not informative.

Rate the answer with one integer:
6: very informative, with good analysis or reasoning, no hallucination
5: very informative, no hallucination
4: somewhat informative, no hallucination
3: not informative, no hallucination
2: very informative, with hallucination
1: somewhat informative, with hallucination
0: not informative, with hallucination

Image facts: {facts}
Question: {question}
Reference answer: {gt_answer}
Answer to grade: {answer}

Explain your judgement in two or three sentences, then write the rating alone on the last line as "Rating: N"."""

_RATING = re.compile(r"rating\s*[:=]?\s*\**\s*\[?\s*(\d+)")


def parse_rating(text: str) -> int | None:
    """The 0-6 rating of a judge reply, or None. Several "Rating: N" that disagree: the last line decides when it
    holds a single value, else None (the reference scorer would silently give 0)."""
    found = [int(x) for x in _RATING.findall(text.lower())]
    if not found:
        return None
    if len(set(found)) > 1:
        found = [int(x) for x in _RATING.findall(text.strip().lower().splitlines()[-1])]
        if len(set(found)) != 1:
            return None
    return found[0] if 0 <= found[0] <= 6 else None


def judge_prompt(rec: dict) -> str:
    facts = rec.get("image_content", rec.get("facts", []))
    facts = ", ".join(facts) if isinstance(facts, list) else str(facts)
    return JUDGE_PROMPT.format(facts=facts or "(none given)", question=rec["question"],
                               gt_answer=rec.get("gt_answer") or "(none given)", answer=rec["answer"])


def mmhal_judge(records: list[dict], model: str, output_path: str, workers: int = 4,
                client: ChatClient | None = None, timeout: float = 120.0) -> dict:
    """Judge each record {question_id, question, answer, gt_answer?, image_content|facts, question_type?}; the
    judge replies go to `output_path` (JSONL, resumable). A reply with no parseable rating is retried by the
    client, then kept with rating None and counted in `n_unparsed`; items whose API calls failed are counted in
    `n_failed` and retried by the next run."""
    client = client or ChatClient()

    def validate(text):
        return None if parse_rating(text) is not None else "no single 'Rating: N' (0-6) in the judge reply"

    def work(rec):
        out = {"question_id": rec["question_id"], "question_type": rec.get("question_type")}
        try:
            reply = client.chat([{"role": "user", "content": judge_prompt(rec)}], model=model, temperature=0.0,
                                max_tokens=512, timeout=timeout, validate=validate)
            return {**out, "rating": parse_rating(reply), "judge_reply": reply}
        except ChatError as e:
            if e.last_kind != "validation":
                raise  # an API failure: recorded by the runner, retried next run
            return {**out, "rating": None, "judge_reply": e.last_text, "error": str(e)}

    summary = run_jsonl_jobs(records, lambda r: r["question_id"], work, output_path, workers,
                             key_field="question_id")
    wanted = {str(r["question_id"]) for r in records}
    judged = [r for r in resume_jsonl(output_path, "question_id") if str(r["question_id"]) in wanted]
    rated = [r for r in judged if r["rating"] is not None]
    by_type: dict[str, list[int]] = {}
    for r in rated:
        if r.get("question_type"):
            by_type.setdefault(r["question_type"], []).append(r["rating"])
    return {"score": sum(r["rating"] for r in rated) / len(rated) if rated else None,
            "hallucination_rate": sum(r["rating"] < 3 for r in rated) / len(rated) if rated else None,
            "n": len(records), "n_rated": len(rated), "n_unparsed": len(judged) - len(rated),
            "n_failed": len(summary.failed), "failed": summary.failed,
            "per_type_score": {t: sum(v) / len(v) for t, v in sorted(by_type.items())}}


def load_mmhal(questions: str, answers: str | None) -> list[dict]:
    if questions.endswith(".json"):
        with open(questions, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{questions}: expected a JSON list (the MMHal-Bench template)")
        qs = [{"question_id": i, **r} for i, r in enumerate(data)]
    else:
        qs = read_jsonl(questions, required=("question_id",), key="question_id")
    ans = {str(r["question_id"]): r["text"] for r in read_jsonl(answers, ("question_id", "text"), "question_id")} \
        if answers else {}
    out = []
    for i, q in enumerate(qs):
        where = f"{questions}: question {q['question_id']!r}"
        text = ans.get(str(q["question_id"]), q.get("model_answer"))
        if text is None:
            raise ValueError(f"{where}: no answer (not in --answers and no 'model_answer')")
        question = q.get("question", q.get("prompt"))
        if question is None:
            raise ValueError(f"{where}: no 'question' or 'prompt'")
        out.append({**q, "question": question.replace("<image>", "").strip(), "answer": text})
    extra = set(ans) - {str(q["question_id"]) for q in qs}
    if extra:
        raise ValueError(f"{answers}: {len(extra)} answers to unknown questions, e.g. {sorted(extra)[:5]}")
    return out


def cmd_mmhal(a) -> dict:
    records = load_mmhal(a.questions, a.answers)
    judge_log = a.judge_log or os.path.splitext(a.out)[0] + "_judge.jsonl"
    m = mmhal_judge(records, a.judge_model, judge_log, workers=a.workers)
    write_json(a.out, {"kind": "mmhal", "judge_model": a.judge_model, "questions": a.questions,
                       "answers": a.answers, "judge_log": judge_log, "metrics": m})
    if m["n_failed"]:
        log.warning("mmhal: %d of %d questions not judged (API failures); run again to finish them",
                    m["n_failed"], m["n"])
    score = "n/a" if m["score"] is None else f"{m['score']:.2f}"
    rate = "n/a" if m["hallucination_rate"] is None else f"{100 * m['hallucination_rate']:.1f}"
    print(f"MMHal ({a.judge_model}): score {score}  hallucination rate {rate}  rated {m['n_rated']}/{m['n']}, "
          f"unparsed {m['n_unparsed']}, failed {m['n_failed']} -> {a.out}")
    return m


# ---------------------------------------------------------------------------------------------- report
def collect_run(run_dir: str) -> dict:
    run: dict = {"run": run_dir, "chair": None, "pope": {}, "mmhal": None}
    origin: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "*.json"))):
        if os.path.basename(path).startswith("report."):
            continue
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except ValueError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        kind = d.get("kind") if isinstance(d, dict) else None
        if kind not in ("chair", "pope", "mmhal"):
            continue  # not a metrics file (e.g. a config)
        slot = f"pope_{d.get('split')}" if kind == "pope" else kind
        if slot in origin:
            raise ValueError(f"{run_dir}: both {origin[slot]} and {path} hold {slot} metrics")
        origin[slot] = path
        if kind == "pope":
            run["pope"][d.get("split") or "all"] = d["metrics"]
        else:
            run[kind] = d["metrics"]
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
    if len(splits) > 1:
        head.append("POPE F1 mean")
    head += ["MMHal score", "MMHal hall."]
    rows = []
    for r in runs:
        c, m = r["chair"] or {}, r["mmhal"] or {}
        row = [os.path.basename(os.path.normpath(r["run"])) or r["run"], pct(c.get("chair_s")),
               pct(c.get("chair_i")), pct(c.get("recall")), "–" if not c else f"{c['length']:.1f}"]
        for s in splits:
            p = r["pope"].get(s, {})
            row += [pct(p.get("accuracy")), pct(p.get("f1")), pct(p.get("yes_ratio"))]
        if len(splits) > 1:
            f1s = [r["pope"][s]["f1"] for s in splits if s in r["pope"]]
            row.append(pct(sum(f1s) / len(f1s)) if f1s else "–")
        row += ["–" if m.get("score") is None else f"{m['score']:.2f}", pct(m.get("hallucination_rate"))]
        rows.append(row)
    md = ["# Hallucination evaluation", "",
          "CHAIR_s, CHAIR_i, recall, POPE accuracy/F1/yes-ratio and the MMHal hallucination rate are percentages; "
          "len is words per caption; the MMHal score is the judge's mean 0-6 rating. – = not measured.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "report.md")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    os.replace(tmp, path)
    write_json(os.path.join(out_dir, "report.json"), {"runs": runs})
    return path


def cmd_report(a) -> None:
    out = a.out or os.path.commonpath([os.path.dirname(os.path.abspath(d.rstrip("/"))) for d in a.run_dirs])
    path = write_report(a.run_dirs, out)
    with open(path, encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"-> {path} and report.json", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="answer a question file (resumable)")
    g.add_argument("--checkpoint", required=True)
    g.add_argument("--questions", required=True)
    g.add_argument("--output", required=True)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--template", default="vicuna_v1")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.set_defaults(fn=cmd_generate)
    q = sub.add_parser("chair-questions", help="one captioning question per annotated image")
    q.add_argument("--annotations", required=True)
    q.add_argument("--output", required=True)
    q.add_argument("--prompt", default="Describe this image.")
    q.set_defaults(fn=cmd_chair_questions)
    c = sub.add_parser("chair", help="CHAIR_s / CHAIR_i / recall of captions")
    c.add_argument("--answers", required=True)
    c.add_argument("--annotations", required=True)
    c.add_argument("--synonyms", default=None,
                   help="synonym table, COCO synonyms.txt format (default: synonyms.txt next to the annotations)")
    c.add_argument("--out", default=None, help="metrics JSON (default: chair.json next to the answers)")
    c.set_defaults(fn=cmd_chair)
    b = sub.add_parser("pope-build", help="POPE questions for one split")
    b.add_argument("--annotations", required=True)
    b.add_argument("--split", required=True, choices=SPLITS)
    b.add_argument("--num-per-image", type=int, default=3, help="yes questions per image (as many no)")
    b.add_argument("--num-images", type=int, default=None)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--suffix", default="", help="appended to every prompt")
    b.add_argument("--output", required=True)
    b.set_defaults(fn=cmd_pope_build)
    e = sub.add_parser("pope", help="POPE metrics")
    e.add_argument("--answers", required=True)
    e.add_argument("--questions", required=True)
    e.add_argument("--split", default=None, help="default: the questions' split field")
    e.add_argument("--out", default=None, help="metrics JSON (default: pope_<split>.json next to the answers)")
    e.set_defaults(fn=cmd_pope)
    h = sub.add_parser("mmhal", help="MMHal-Bench judged through the chat API (OPENAI_BASE_URL, OPENAI_API_KEY)")
    h.add_argument("--questions", required=True)
    h.add_argument("--answers", default=None)
    h.add_argument("--judge-model", required=True)
    h.add_argument("--judge-log", default=None, help="judge replies JSONL (default: <out>_judge.jsonl)")
    h.add_argument("--workers", type=int, default=4)
    h.add_argument("--out", required=True)
    h.set_defaults(fn=cmd_mmhal)
    r = sub.add_parser("report", help="report.md + report.json over run dirs")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out", default=None, help="output dir (default: the run dirs' common parent)")
    r.set_defaults(fn=cmd_report)
    a = p.parse_args(argv)
    if a.cmd == "chair" and a.out is None:
        a.out = os.path.join(os.path.dirname(os.path.abspath(a.answers)), "chair.json")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a.fn(a)


if __name__ == "__main__":
    main()
