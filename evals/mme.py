"""MME (Fu et al. 2023, "MME: A Comprehensive Evaluation Benchmark for Multimodal Large Language Models") as LLaVA-1.5
runs it and MME's own eval_tool scores it: 14 subtasks of yes / no questions, two per image (one true, one false);
per subtask accuracy (per question) and accuracy+ (images with both right), score = 100 * (acc + acc+); Perception
= the sum over 10 subtasks (max 2000; LLaVA-1.5-7B 1510.7, POVID 1452.8), Cognition over 4 (max 800).

Files, as published:
  MME_Benchmark_release_version/<subtask>/
                          MME's data, in one of two layouts per subtask: images/ + questions_answers_YN/ (a
                          <stem>.txt named after each image), or image and <stem>.txt side by side. Each .txt line is
                          "question<TAB>Yes|No", the question ending in " Please answer yes or no." (with two spaces
                          before "Please" in places).
  llava_mme.jsonl         LLaVA's question file (eval.zip, playground/data/eval/MME/): {"question_id": "<subtask>/
                          [images/]<file>", "image": same, "text": question + "\\nAnswer the question using a single
                          word or phrase.", "category"}. An image's two questions share one question_id.

Answering (haotian-liu/LLaVA scripts/v1_5/eval/mme.sh, llava/eval/model_vqa_loader.py): the "text" as is (MME's own
" Please answer yes or no." replaced by LLaVA's short-answer suffix), vicuna_v1, temperature 0, 128 new tokens:
recipes/eval.toml:mme. `question_records` reads llava_mme.jsonl or, when given the benchmark folder, builds the same
questions from its .txt files. Since an image's two questions share LLaVA's question_id, the answer lines written
here carry "<question_id>#q1" / "#q2" (unique, so `generate` can resume); LLaVA's converter still reads them (it
takes the subtask before the first "/" and the file stem after the last "/" up to the first ".").

Scoring: scripts/convert_answer_to_mme.py (LLaVA's eval.zip) then eval_tool/calculation.py (MME's), `mme_scores`:
  - an answer is matched to MME's ground truth by (subtask, <stem>.txt, question): the prompt without LLaVA's suffix,
    stripped, plus " Please answer yes or no." - or with two spaces, if that is the form in MME's file;
  - the answer is lowercased; "yes" / "no" exactly, else "yes" within its first 4 characters, else "no" within
    them, else "other" (always wrong). (calculation.py reads the answer with the line's newline still attached, so
    the exact test never fires and the 4-character test decides; both give the same label, see `parse_yes_no`.)
  - acc = right / questions; acc+ = images with both questions right / images; score = acc * 100 + acc+ * 100, and
    totals are summed in calculation.py's order, so every float equals the one it prints (`official_lines`).
Where this is stricter than the official scripts, an error names the item: an answer that matches no ground-truth
question (the converter's KeyError), a question answered twice, an image of a scored subtask with a question left
unanswered (calculation.py pairs consecutive lines, so a gap would pair the wrong answers), answers from more than
one protocol ("gen"). The converter writes an answer with a newline or tab into its TSV unescaped, which
calculation.py cannot read back (it crashes); here such answers are scored by the same 4-character rule and counted
(n_multiline). A subtask without answers is left out and its total is None (calculation.py would stop on the missing
file); `complete` says whether all 14 were scored. The share of "other" answers is reported beside each score.

    python eval.py generate --recipe recipes/eval.toml:mme --checkpoint CKPT --questions MME/llava_mme.jsonl \\
        --image-root MME/MME_Benchmark_release_version --output RUN/mme_answers.jsonl
    python eval.py mme --answers RUN/mme_answers.jsonl --mme-root MME/MME_Benchmark_release_version --out RUN/mme.json
"""
from __future__ import annotations

import os

from evals.files import SHORT_ANSWER_SUFFIX, first_record, one_protocol, protocol, read_jsonl_lines, write_json

EVAL_TYPES = {  # calculation.py's eval_type_dict, order kept (it is the order of the printed scores and sums)
    "Perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                   "OCR"),
    "Cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}
SUBTASKS = tuple(t for ts in EVAL_TYPES.values() for t in ts)
MME_SUFFIX = " Please answer yes or no."
IMAGE_EXTS = (".jpg", ".png", ".jpeg")


# ---------------------------------------------------------------------------------------------- the files
def _qa_dirs(cat_dir: str) -> tuple[str, str]:
    """(image folder, question folder) of one subtask: the convert script's two layouts (it tells them apart by an
    images/ folder; here by questions_answers_YN/, the same on MME's data, and it also reads a copy without images)."""
    if os.path.isdir(os.path.join(cat_dir, "questions_answers_YN")):
        return os.path.join(cat_dir, "images"), os.path.join(cat_dir, "questions_answers_YN")
    return cat_dir, cat_dir


def read_ground_truth(root: str) -> dict[tuple[str, str, str], dict]:
    """{(subtask, "<stem>.txt", question): {"answer": "Yes"|"No", "line": "file:n", "k": 1|2, "image_dir"}} from
    MME_Benchmark_release_version (every subtask folder; both layouts)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no MME benchmark folder (MME_Benchmark_release_version)")
    gt: dict[tuple[str, str, str], dict] = {}
    for cat in sorted(os.listdir(root)):
        cat_dir = os.path.join(root, cat)
        if not os.path.isdir(cat_dir):
            continue
        image_dir, qa_dir = _qa_dirs(cat_dir)
        for name in sorted(os.listdir(qa_dir)):
            if not name.endswith(".txt"):
                continue
            path = os.path.join(qa_dir, name)
            with open(path, encoding="utf-8") as f:
                lines = [ln for ln in f.read().split("\n") if ln.strip()]  # text mode: \r\n, \r read as \n
            for n, line in enumerate(lines, 1):
                parts = line.strip().split("\t")
                if len(parts) != 2 or parts[1].lower() not in ("yes", "no"):
                    raise ValueError(f"{path}:{n}: expected 'question<TAB>Yes|No', got {line!r}")
                key = (cat, name, parts[0])
                if key in gt:
                    raise ValueError(f"{path}:{n}: the same question appears twice")
                gt[key] = {"answer": parts[1], "line": f"{path}:{n}", "k": n, "image_dir": image_dir}
    if not gt:
        raise ValueError(f"{root}: no question files found (expected <subtask>/[questions_answers_YN/]*.txt)")
    return gt


def gt_key(question_id: str, prompt: str, gt: dict) -> tuple[str, str, str]:
    """convert_answer_to_mme.py's lookup: subtask, <stem>.txt and the question in MME's own wording."""
    cat = question_id.split("/")[0]
    file = question_id.split("/")[-1].split(".")[0] + ".txt"
    q = prompt
    if SHORT_ANSWER_SUFFIX.strip() in q:
        q = q.replace(SHORT_ANSWER_SUFFIX.strip(), "").strip()
    if MME_SUFFIX.strip() not in q:
        q = q + MME_SUFFIX
        if (cat, file, q) not in gt:
            q = q.replace(MME_SUFFIX, " " + MME_SUFFIX)  # the double space of some MME questions
    return cat, file, q


def _mme_id(qid: str, k: int) -> str:
    return f"{qid}#q{k}"


GENERATE_DEFAULTS = {"max_new_tokens": 128, "image_aspect_ratio": "pad"}  # model_vqa_loader.py, where unset


def is_question_file(path: str) -> bool:
    """MME's benchmark folder, or a JSONL file whose first line is one of llava_mme.jsonl."""
    if os.path.isdir(path):
        return any(os.path.isdir(os.path.join(path, t)) for t in SUBTASKS)
    first = first_record(path)
    return first is not None and first.get("category") in SUBTASKS and "/" in str(first.get("question_id"))


def question_records(path: str, image_root: str | None = None) -> list[dict]:
    """`generate`'s work list for MME (the record layout of evals/files.py question_records): from LLaVA's
    llava_mme.jsonl, or from the benchmark folder itself (the same questions, LLaVA's wording and ids)."""
    if os.path.isdir(path):
        return _folder_questions(path, image_root if image_root is not None else path)
    base = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    out, count = [], {}
    for lineno, rec in read_jsonl_lines(path):
        where = f"{path}:{lineno}"
        if not all(isinstance(rec.get(k), str) for k in ("question_id", "image", "text", "category")) or \
                "/" not in rec["question_id"]:
            raise ValueError(f"{where}: not an MME question line of LLaVA's llava_mme.jsonl (needs string "
                             f"'question_id' = '<subtask>/<file>', 'image', 'text', 'category')")
        if rec["category"] not in SUBTASKS:
            raise ValueError(f"{where}: category {rec['category']!r} is not an MME subtask ({', '.join(SUBTASKS)})")
        k = count[rec["question_id"]] = count.get(rec["question_id"], 0) + 1
        if k > 2:
            raise ValueError(f"{where}: a third question for image {rec['question_id']!r} (MME has two per image)")
        prompt = rec["text"] if rec["text"].endswith(SHORT_ANSWER_SUFFIX) else rec["text"] + SHORT_ANSWER_SUFFIX
        qid = _mme_id(rec["question_id"], k)
        out.append({"question_id": qid, "prompt": prompt, "image_file": os.path.join(base, rec["image"]),
                    "suffix": SHORT_ANSWER_SUFFIX, "where": where,
                    "answer_base": {"question_id": qid, "image": rec["image"], "category": rec["category"],
                                    "prompt": prompt}})
    return out


def _folder_questions(root: str, image_root: str) -> list[dict]:
    out = []
    for (cat, file, question), g in sorted(read_ground_truth(root).items(), key=lambda kv: (kv[0][:2], kv[1]["k"])):
        if cat not in SUBTASKS:
            continue
        stem = file[:-4]
        rel_dir = os.path.relpath(g["image_dir"], root)
        found = [stem + e for e in IMAGE_EXTS if os.path.isfile(os.path.join(g["image_dir"], stem + e))]
        if len(found) != 1:
            raise FileNotFoundError(f"{g['line']}: {'no' if not found else 'more than one'} image {stem}"
                                    f"{{{','.join(IMAGE_EXTS)}}} in {g['image_dir']}")
        image = os.path.normpath(os.path.join(rel_dir, found[0])).replace(os.sep, "/")
        q = question[:-len(MME_SUFFIX)].rstrip() if question.endswith(MME_SUFFIX) else question
        prompt = q + SHORT_ANSWER_SUFFIX
        qid = _mme_id(image, g["k"])
        out.append({"question_id": qid, "prompt": prompt, "image_file": os.path.join(image_root, image),
                    "suffix": SHORT_ANSWER_SUFFIX, "where": g["line"],
                    "answer_base": {"question_id": qid, "image": image, "category": cat, "prompt": prompt}})
    return out


# ---------------------------------------------------------------------------------------------- scoring
def parse_yes_no(text: str) -> str:
    """calculation.py's parse_pred_ans on the answer as it reads it back: lowercased, with the line's "\\n"."""
    pred = (text + "\n").lower()
    if pred in ("yes", "no"):  # never true with the newline attached; kept to show the official order of tests
        return pred
    prefix = pred[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_scores(answers: list[tuple[str, str, str]], gt: dict, where: str = "answers") -> dict:
    """answers: [(question_id, prompt, text)] (LLaVA's ids or ours); gt: read_ground_truth. Returns
    {"subtasks": {name: {...}}, "perception", "cognition", "total", "complete", counts...}; see the docstring."""
    per_image: dict[tuple[str, str], dict] = {}
    n_multiline = 0
    for i, (qid, prompt, text) in enumerate(answers, 1):
        key = gt_key(str(qid), prompt, gt)
        if key not in gt:
            raise ValueError(f"{where}: answer {i} ({qid!r}): question {key[2]!r} is not in MME's {key[0]}/{key[1]} "
                             f"(another benchmark's answers, or a prompt that is not LLaVA's?)")
        slot = per_image.setdefault(key[:2], {})
        if key[2] in slot:
            raise ValueError(f"{where}: answer {i} ({qid!r}): question {key[2]!r} of {key[0]}/{key[1]} is answered "
                             f"twice")
        slot[key[2]] = parse_yes_no(text)
        n_multiline += any(c in text for c in "\n\r\t")
    questions_of: dict[tuple[str, str], list[str]] = {}
    for cat, file, q in gt:
        questions_of.setdefault((cat, file), []).append(q)
    subtasks = {}
    for cat in SUBTASKS:
        images = sorted(k for k in per_image if k[0] == cat)
        if not images:
            continue
        n_q = right = plus = other = tp = fn = fp = tn = 0
        for img in images:
            qs = questions_of[img]
            unanswered = [q for q in qs if q not in per_image[img]]
            if unanswered:
                raise ValueError(f"{where}: {img[0]}/{img[1]}: {len(unanswered)} of its questions unanswered, "
                                 f"e.g. {unanswered[0]!r}")
            if len(qs) != 2:
                raise ValueError(f"{img[0]}/{img[1]}: {len(qs)} questions; MME has two per image")
            both = 0
            for q in qs:
                truth, pred = gt[(*img, q)]["answer"].lower(), per_image[img][q]
                n_q += 1
                right += pred == truth
                both += pred == truth
                other += pred == "other"
                tp += truth == "yes" and pred == "yes"
                fn += truth == "yes" and pred == "no"
                fp += truth == "no" and pred == "yes"
                tn += truth == "no" and pred == "no"
            plus += both == 2
        acc, acc_plus = right / n_q, plus / len(images)
        score = 0
        score += acc * 100  # calculation.py: task_score += v * 100 for acc, then acc_plus
        score += acc_plus * 100
        subtasks[cat] = {"acc": acc, "acc_plus": acc_plus, "score": score, "n_questions": n_q,
                         "n_images": len(images), "n_other": other, "other_rate": other / n_q,
                         "tp": tp, "fn": fn, "fp": fp, "tn": tn}
    out: dict = {"subtasks": subtasks}
    for group, names in EVAL_TYPES.items():
        total = 0
        for name in names:
            total += subtasks[name]["score"] if name in subtasks else 0
        out[group.lower()] = total if all(n in subtasks for n in names) else None
        out[f"{group.lower()}_subtasks"] = sum(n in subtasks for n in names)
    n_all = sum(s["n_questions"] for s in subtasks.values())
    n_other = sum(s["n_other"] for s in subtasks.values())
    out.update({"complete": len(subtasks) == len(SUBTASKS), "n_questions": n_all, "n_other": n_other,
                "other_rate": n_other / n_all if n_all else None, "n_multiline": n_multiline})
    return out


def official_lines(m: dict) -> list[str]:
    """What calculation.py prints, for the subtasks scored (its `print` of floats = repr)."""
    out = []
    for group, names in EVAL_TYPES.items():
        scored = [n for n in names if n in m["subtasks"]]
        if not scored:
            continue
        total = 0
        for n in scored:
            total += m["subtasks"][n]["score"]
        out += [f"=========== {group} ===========", f"total score: {total} ", ""]
        out += [f"\t {n}  score: {m['subtasks'][n]['score']}" for n in scored]
        out += ["", ""]
    return out


# ---------------------------------------------------------------------------------------------- command
def read_answers(path: str) -> list[dict]:
    return [r for _, r in read_jsonl_lines(path, required=("question_id", "prompt", "text"))]


def cmd_mme(a) -> dict:
    answers = read_answers(a.answers)
    one_protocol(answers, a.answers)
    no_suffix = [r["question_id"] for r in answers if not r["prompt"].endswith(SHORT_ANSWER_SUFFIX)]
    if no_suffix:
        raise ValueError(f"{a.answers}: {len(no_suffix)} answer(s) were asked without LLaVA's short-answer suffix "
                         f"(another protocol), e.g. {no_suffix[0]!r}")
    gt = read_ground_truth(a.mme_root)
    m = mme_scores([(r["question_id"], r["prompt"], r["text"]) for r in answers], gt, a.answers)
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.answers)), "mme.json")
    write_json(out, {"kind": "mme", "answers": a.answers, "mme_root": a.mme_root,
                     "scorer": "LLaVA convert_answer_to_mme.py + MME eval_tool/calculation.py rules",
                     "protocol": protocol(answers), "metrics": m})
    print("\n".join(official_lines(m)))
    p, c = m["perception"], m["cognition"]
    print(f"MME perception {'n/a' if p is None else f'{p:.1f}'} ({m['perception_subtasks']}/10 subtasks)  "
          f"cognition {'n/a' if c is None else f'{c:.1f}'} ({m['cognition_subtasks']}/4)  'other' answers "
          f"{m['n_other']}/{m['n_questions']}; multi-line answers {m['n_multiline']} -> {out}")
    return m


def add_arguments(s) -> None:
    s.add_argument("--answers", required=True, help="answers JSONL (generate's or LLaVA's model_vqa_loader.py)")
    s.add_argument("--mme-root", required=True, help="MME_Benchmark_release_version (the ground-truth .txt files)")
    s.add_argument("--out", default=None, help="metrics JSON (default: mme.json next to the answers)")


COMMANDS = {"mme": ("MME per-subtask acc / acc+, perception and cognition", add_arguments, cmd_mme)}
