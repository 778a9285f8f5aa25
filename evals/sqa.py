"""ScienceQA-IMG (Lu et al., NeurIPS 2022) as LLaVA-1.5 scores it: multiple-choice science questions answered with
one option letter, accuracy over the test split and over its questions with an image ("IMG-Accuracy", the number
papers call SQA-IMG: LLaVA-1.5-7B 66.8, POVID 68.8).

Files, as published:
  problems.json           ScienceQA (lupantech/ScienceQA data/scienceqa/): {pid: {"question", "choices" [str],
                          "answer" (index into choices), "hint" (the text context), "image" ("image.png" or null),
                          "subject", "grade" ("grade1".."grade12"), "topic", "split", ...}}
  pid_splits.json         ScienceQA: {"train": [pid...], "val": [...], "test": [...], "minitest": ...}
  llava_test_CQM-A.json   LLaVA's question file (eval.zip, playground/data/eval/scienceqa/): a JSON list of
                          {"id": pid, "image": "<pid>/image.png" (image questions only), "conversations":
                          [{"from": "human", "value": "<image>\\nContext: ...\\nQuestion...\\nA. ...\\nB. ..."}, ...]}
  images/test/<pid>/image.png

Answering (haotian-liu/LLaVA llava/eval/model_vqa_science.py run by scripts/v1_5/eval/sqa.sh): the human turn with
"<image>" removed and stripped, "<image>\\n" put back in front for image questions, then
"\\nAnswer with the option's letter from the given choices directly." (--single-pred-prompt); vicuna_v1, temperature
0, up to 1024 new tokens (recipes/eval.toml:sqa). The answer line keeps that prompt, "<image>" included: the scorer
decides "image question" from it, as LLaVA's does.

Scoring (llava/eval/eval_science_qa.py), `parse_answer` and `sqa_scores`:
  - the answer text exactly "A".."E" -> that letter; else text of 3+ characters whose first is A..E and whose next
    two are ". " -> that letter; else the regex r'The answer is ([A-Z]).' (its "." matches any character) with
    exactly one match -> that letter; else "FAILED".
  - the letter counts only if it is one of the first len(choices) of A..E; otherwise, or FAILED, the answer is wrong.
  - every problem of the split is scored; one without an answer is FAILED and, its prompt being unknown, is not an
    image question. Accuracy = correct / all; IMG-Accuracy = correct / all among answers whose prompt has "<image>".
  LLaVA prints `Total: N, Correct: C, Accuracy: xx.xx%, IMG-Accuracy: yy.yy%` (`llava_line`).
The per subject / context / grade table is ScienceQA's own tools/evaluate_acc.py (get_scores), which reads the
"results" (pid -> predicted index, -1 for FAILED) that LLaVA's script writes to --output-result: accuracy over
natural / social / language science, over problems with a text context (hint), with an image, with neither, grades
1-6 and 7-12, and per topic; each printed "{:.2f}" (-1 where a group is empty; here None).

Where this is stricter than the official scripts (they would print a number; here it is an error naming the item):
an answer whose question_id is not a problem of the split, a problem answered twice (LLaVA keeps the last), an
image problem without an answer (LLaVA would silently drop it from IMG-Accuracy), answer lines from more than one
protocol ("gen") or whose prompt lacks the letter instruction. Text-only problems without an answer are counted
(n_missing): Accuracy then counts them wrong, as LLaVA's does, while IMG-Accuracy is unaffected, so answering the
image questions alone (`--image-only`, the default of `eval.py generate` on this file) gives the exact SQA-IMG.

    python eval.py generate --recipe recipes/eval.toml:sqa --checkpoint CKPT --questions SQA/llava_test_CQM-A.json \\
        --image-root SQA/images/test --output RUN/sqa_answers.jsonl
    python eval.py sqa --answers RUN/sqa_answers.jsonl --base-dir SQA --out RUN/sqa.json
"""
from __future__ import annotations

import os
import re

from evals.files import first_char, one_protocol, protocol, read_json, read_jsonl_lines, write_json

OPTIONS = ("A", "B", "C", "D", "E")  # eval_science_qa.py --options default
LETTER_SUFFIX = "\nAnswer with the option's letter from the given choices directly."  # --single-pred-prompt
IMAGE_TAG = "<image>"
ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # verbatim rule: the "." is a regex wildcard there
SUBJECTS = {"natural": "natural science", "social": "social science", "language": "language science"}
GRADES = {"grade_1_6": {f"grade{i}" for i in range(1, 7)}, "grade_7_12": {f"grade{i}" for i in range(7, 13)}}
# evaluate_acc.py's topic list, in its order (the 26 topics of ScienceQA)
TOPICS = ("punctuation", "literacy-in-science", "verbs", "pronouns", "civics", "culture", "word-study", "economics",
          "physics", "units-and-measurement", "science-and-engineering-practices", "reading-comprehension",
          "global-studies", "grammar", "figurative-language", "us-history", "writing-strategies", "world-history",
          "reference-skills", "biology", "earth-science", "phonological-awareness", "capitalization", "chemistry",
          "vocabulary", "geography")
PROBLEM_FIELDS = {"choices": list, "answer": int}


# ---------------------------------------------------------------------------------------------- the files
def read_problems(base_dir: str, split: str = "test") -> dict[str, dict]:
    """{pid: problem} of one split, in pid_splits.json's order, from ScienceQA's problems.json and pid_splits.json
    in base_dir (LLaVA's --base-dir). Each problem is checked for what scoring reads."""
    pp, sp = os.path.join(base_dir, "problems.json"), os.path.join(base_dir, "pid_splits.json")
    problems, splits = read_json(pp), read_json(sp)
    if not isinstance(problems, dict):
        raise ValueError(f"{pp}: expected ScienceQA's problems.json, a JSON object {{pid: problem}}")
    if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
        have = sorted(splits) if isinstance(splits, dict) else type(splits).__name__
        raise ValueError(f"{sp}: no split {split!r} (ScienceQA's pid_splits.json has {have})")
    out = {}
    for pid in splits[split]:
        pid = str(pid)
        if pid in out:
            raise ValueError(f"{sp}: {split}: pid {pid!r} appears twice")
        p = problems.get(pid)
        if not isinstance(p, dict):
            raise ValueError(f"{pp}: no problem {pid!r} (listed in {sp} under {split!r})")
        for k, typ in PROBLEM_FIELDS.items():
            if not isinstance(p.get(k), typ) or isinstance(p.get(k), bool):
                raise ValueError(f"{pp}: problem {pid!r}: field {k!r} must be a {typ.__name__}, got {p.get(k)!r}")
        if not 0 <= p["answer"] < len(p["choices"]):
            raise ValueError(f"{pp}: problem {pid!r}: answer {p['answer']} is not an index of its "
                             f"{len(p['choices'])} choices")
        out[pid] = p
    if not out:
        raise ValueError(f"{sp}: split {split!r} is empty")
    return out


GENERATE_DEFAULTS = {"max_new_tokens": 1024, "image_aspect_ratio": "pad"}  # model_vqa_science.py, where unset


def _is_sqa_list(data) -> bool:
    return isinstance(data, list) and bool(data) and all(
        isinstance(r, dict) and "id" in r and "conversations" in r for r in data[:3])


def is_question_file(path: str) -> bool:
    """LLaVA's llava_test_CQM-A.json: a JSON list of {"id", "conversations"} (MMHal's template, also a JSON list,
    has neither)."""
    if not os.path.isfile(path) or first_char(path) != "[":
        return False
    return _is_sqa_list(read_json(path))


def question_records(path: str, image_root: str | None = None, image_only: bool = True) -> list[dict]:
    """LLaVA's llava_test_CQM-A.json as `generate`'s work list (the record layout of evals/files.py
    question_records), prompts built as model_vqa_science.py builds them. image_only: the image questions alone
    (what SQA-IMG needs; text-only questions have no image to give the model)."""
    data = read_json(path)
    if not _is_sqa_list(data):
        raise ValueError(f"{path}: not LLaVA's ScienceQA question file (llava_test_CQM-A.json: a JSON list of "
                         f"{{'id', 'image'?, 'conversations'}})")
    base = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    out, seen = [], set()
    for i, rec in enumerate(data):
        where = f"{path}: item {i}"
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv or not isinstance(conv[0], dict) or \
                conv[0].get("from") != "human" or not isinstance(conv[0].get("value"), str):
            raise ValueError(f"{where}: 'conversations' must start with a human turn {{'from': 'human', 'value'}}")
        pid = str(rec["id"])
        if pid in seen:
            raise ValueError(f"{where}: id {pid!r} appears twice")
        seen.add(pid)
        has_image = "image" in rec
        if not has_image and image_only:
            continue
        qs = conv[0]["value"].replace(IMAGE_TAG, "").strip()
        prompt = (IMAGE_TAG + "\n" + qs if has_image else qs) + LETTER_SUFFIX
        image = None
        if has_image:
            if not isinstance(rec["image"], str) or not rec["image"]:
                raise ValueError(f"{where}: field 'image' must be a file name, got {rec['image']!r}")
            image = rec["image"] if os.path.isabs(rec["image"]) else os.path.join(base, rec["image"])
        out.append({"question_id": pid, "prompt": prompt, "image_file": image, "suffix": LETTER_SUFFIX,
                    "answer_base": {"question_id": pid, "prompt": prompt}, "where": where})
    return out


def read_answers(path: str) -> dict[str, dict]:
    """{question_id: answer line} of an answers JSONL (LLaVA's or generate's: "question_id", "prompt", "text").
    A question answered twice is an error (LLaVA's script would keep the last one silently)."""
    return {str(r["question_id"]): r
            for _, r in read_jsonl_lines(path, required=("question_id", "prompt", "text"), key="question_id")}


# ---------------------------------------------------------------------------------------------- scoring
def parse_answer(text: str) -> str:
    """eval_science_qa.py's rule: a letter A..E, or "FAILED"."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def pred_index(letter: str, n_choices: int) -> int:
    """Index of the chosen option, -1 for FAILED or a letter past the problem's choices (get_pred_idx)."""
    return OPTIONS.index(letter) if letter in OPTIONS[:n_choices] else -1


def _acc(rows: list[tuple[dict, bool]], keep) -> dict:
    sel = [ok for p, ok in rows if keep(p)]
    return {"accuracy": sum(sel) / len(sel) if sel else None, "correct": sum(sel), "n": len(sel)}


def sqa_scores(problems: dict[str, dict], answers: dict[str, dict], where: str = "answers") -> dict:
    """LLaVA's ScienceQA scores of `answers` ({question_id: {"prompt", "text"}}) over `problems` (read_problems),
    with ScienceQA's breakdown; fractions, not percent. See the module docstring for the rules and the errors."""
    extra = [k for k in answers if k not in problems]
    if extra:
        raise ValueError(f"{where}: {len(extra)} answer(s) to questions that are not problems of this split, e.g. "
                         f"{extra[:3]} (another benchmark's or split's answers?)")
    no_suffix = [k for k, r in answers.items() if not r["prompt"].endswith(LETTER_SUFFIX)]
    if no_suffix:
        raise ValueError(f"{where}: {len(no_suffix)} answer(s) were asked without LLaVA's letter instruction "
                         f"{LETTER_SUFFIX.strip()!r} (another protocol), e.g. question {no_suffix[0]!r}")
    missing_img = [pid for pid, p in problems.items() if pid not in answers and p.get("image")]
    if missing_img:
        raise ValueError(f"{where}: {len(missing_img)} image question(s) have no answer, e.g. {missing_img[:3]}: "
                         f"IMG-Accuracy would silently leave them out")
    rows, results, parsed = [], {}, {}
    n_failed = n_out_of_range = 0
    for pid, p in problems.items():
        r = answers.get(pid)
        text, prompt = (r["text"], r["prompt"]) if r is not None else ("FAILED", "Unknown")
        letter = parse_answer(text)
        idx = pred_index(letter, len(p["choices"]))
        if r is not None:
            n_failed += letter == "FAILED"
            n_out_of_range += letter != "FAILED" and idx == -1
        results[pid], parsed[pid] = idx, letter
        rows.append(({**p, "_img": IMAGE_TAG in prompt}, idx == p["answer"]))
    total, correct = len(rows), sum(ok for _, ok in rows)
    img = _acc(rows, lambda p: p["_img"])
    n_answered = len(answers)
    m = {"accuracy": correct / total, "correct": correct, "total": total,
         "img_accuracy": img["accuracy"], "img_correct": img["correct"], "img_total": img["n"],
         "n_answered": n_answered, "n_missing": total - n_answered, "n_failed": n_failed,
         "n_out_of_range": n_out_of_range, "unparseable_rate": n_failed / n_answered if n_answered else None}
    groups = {name: _acc(rows, lambda p, s=s: p.get("subject") == s) for name, s in SUBJECTS.items()}
    groups["has_text"] = _acc(rows, lambda p: bool(p.get("hint")))
    groups["has_image"] = _acc(rows, lambda p: bool(p.get("image")))
    groups["no_context"] = _acc(rows, lambda p: not p.get("hint") and not p.get("image"))
    for name, gs in GRADES.items():
        groups[name] = _acc(rows, lambda p, gs=gs: p.get("grade") in gs)
    m["breakdown"] = groups
    m["topics"] = {t: _acc(rows, lambda p, t=t: p.get("topic") == t) for t in TOPICS}
    return {"metrics": m, "results": results, "parsed": parsed}


def llava_line(m: dict) -> str:
    """The line eval_science_qa.py prints, digit for digit (its ratios are computed the same way: c / n * 100)."""
    return (f"Total: {m['total']}, Correct: {m['correct']}, Accuracy: {m['correct'] / m['total'] * 100:.2f}%, "
            f"IMG-Accuracy: {m['img_correct'] / m['img_total'] * 100:.2f}%")


def scienceqa_lines(m: dict) -> list[str]:
    """ScienceQA's evaluate_acc.py breakdown, as `name: value` with its "{:.2f}" (and -1 for an empty group)."""
    def fmt(g):
        return -1 if not g["n"] else format(g["correct"] / g["n"] * 100, ".2f")

    out = [f"{name}: \t{fmt(g)}" for name, g in m["breakdown"].items()]
    out.append(f"average: \t{m['correct'] / m['total'] * 100:.2f}")
    return out + [f"{name}: \t{fmt(g)}" for name, g in m["topics"].items()]


# ---------------------------------------------------------------------------------------------- command
def cmd_sqa(a) -> dict:
    problems = read_problems(a.base_dir, a.split)
    answers = read_answers(a.answers)
    one_protocol(list(answers.values()), a.answers)
    s = sqa_scores(problems, answers, a.answers)
    m = s["metrics"]
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.answers)), "sqa.json")
    write_json(out, {"kind": "sqa", "answers": a.answers, "base_dir": a.base_dir, "split": a.split,
                     "scorer": "LLaVA llava/eval/eval_science_qa.py rules; breakdown as ScienceQA "
                               "tools/evaluate_acc.py", "protocol": protocol(list(answers.values())), "metrics": m,
                     "results": s["results"], "parsed": s["parsed"]})
    print(llava_line(m))
    print(f"SQA-IMG {100 * m['img_accuracy']:.2f}  ({m['img_total']} image questions; unparseable "
          f"{m['n_failed']}/{m['n_answered']} answers, letters past the choices {m['n_out_of_range']}, "
          f"no answer {m['n_missing']}) -> {out}")
    if m["n_missing"]:
        print(f"sqa: {m['n_missing']} text-only problem(s) without an answer count as wrong in Accuracy "
              f"(as in LLaVA's script); IMG-Accuracy is complete")
    return m


def add_arguments(s) -> None:
    s.add_argument("--answers", required=True, help="answers JSONL (generate's or LLaVA's model_vqa_science.py)")
    s.add_argument("--base-dir", required=True, help="folder with ScienceQA's problems.json and pid_splits.json")
    s.add_argument("--split", default="test", help="pid_splits.json split (LLaVA: test)")
    s.add_argument("--out", default=None, help="metrics JSON (default: sqa.json next to the answers)")


COMMANDS = {"sqa": ("ScienceQA(-IMG) accuracy, LLaVA's rules", add_arguments, cmd_sqa)}
