"""Object HalBench (RLHF-V, Yu et al. CVPR 2024; as run by RLAIF-V): object hallucination of detailed descriptions of
300 COCO images. Response-level rate = responses with a hallucinated COCO object / responses that mention any COCO
object (CHAIRs_refine); mention-level rate = hallucinated COCO mentions / all COCO mentions (CHAIRi).
LLaVA-1.5-7B 52.7 / 28.0, POVID 33.4 / 16.6 (SENTINEL Tab. 1).

Files, as published (RLHF-V/RLAIF-V eval/data/):
  obj_halbench_300_with_image.jsonl  one line per question: {"image_id" (COCO 2014), "question", "image" (the JPEG,
                                     base64)}; no question_id: an answer is tied to its line by position
  synonyms_refine.txt                80 lines "category, synonym, ...", the COCO vocabulary
  COCO 2014 annotations              instances_{val,train}2014.json and captions_{val,train}2014.json
Answering (script/eval/eval_rlaifv_objhal.sh, muffin/eval/muffin_vqa.py): the question as is, no suffix, the image
in front; LLaVA's llava_v1 template; temperature 0 with 3 beams, max 1024 new tokens (recipes/eval.toml:objhal says
what of this `generate` can do). Answer lines: {"question_id" (the line index), "image_id", "prompt", "text"}.

Scoring, as eval/eval_gpt_obj_halbench.py then eval/summarize_gpt_obj_halbench_review.py:
  ground truth   per image: the categories of its instance annotations, plus the COCO words found in its human
                 captions by the caption matcher below (`ObjHalVocab.caption_words`);
  answer text    "Assistant:" removed, stripped;
  objects        (official) a chat model lists the objects the answer mentions, as a JSON list (`extract_prompt`;
                 temperature 0.2, max 512 tokens, one system message); answers of <= 3 words get [] unasked; each
                 listed object, as "a {object}", is lemmatised; if it holds COCO double words (any multi-word synonym,
                 "home plate", "train track", "baby/adult <animal>", "passenger jet/train", "bow tie", "toilet seat")
                 those are kept, else its runs of nouns; the list is deduplicated per answer (`refine_objects`);
                 then the toilet-seat rule and a lookup in the vocabulary (`coco_mentions`);
                 (offline, `--offline`) the official no-chat branch: the caption matcher on the answer itself;
  counting       per answer: a mention whose category is not in the ground truth is hallucinated; the answer is
                 hallucinated if any is; recall = distinct correct categories / ground-truth categories; length =
                 len(answer.split(" ")) (`objhal_scores`, the official sums, `summary_lines` its printout).
The official lemmatisers are NLTK's (word_tokenize + WordNet, no POS) for captions and spaCy's en_core_web_trf
(lemmas + NN* tags) for the chat model's objects; neither model is on the package registries here. In their place:
  tokenize      lowercase; words split from punctuation; "'s" / "n't" split off; hyphenated words kept whole in
                captions (as NLTK's word_tokenize) and split in the chat model's objects (as spaCy);
  lemma         of the token, its WordNet suffix-rule forms and the project's singularised form
                (evals/chair.py `singularize`), the shortest that is in the vocabulary (WordNet returns the
                shortest form it knows), else the singularised form; "people" stays "people" (both official
                lemmatisers keep it); no verb or adjective lemmas (spaCy's "parked" -> "park");
  nouns         every token but function words and numbers; before the last token also listed adjectives (colours,
                sizes, ages, materials, ...) and -ed / -ing modifiers ("parked", "sleeping"): spaCy's JJ / VBN / VBG.
The cases where this differs from the official path, each checked, are in tests/test_eval_objhal.py
(LEMMA_CASES: a capitalised "Frisbee", which spaCy takes for a proper noun and we match, and a gerund modifier
that spaCy tags as a noun, "hiking backpack"). Scores with --offline are labelled as not comparable with published
ones; the chat path with our stand-in is labelled comparable only with RLAIF-V's own prompt.

Bad input is an error naming the item: a question file that is not Object HalBench's, an answer to no question, a
question answered twice, an image id that no COCO instances file lists (the official script would give it an empty
ground truth and call every mention a hallucination), an extraction log from another model or prompt. Questions
left unanswered are counted (n_missing); `full_benchmark` is true only for 300 images.

    python eval.py generate --recipe recipes/eval.toml:objhal --checkpoint CKPT \\
        --questions obj_halbench_300_with_image.jsonl --output RUN/objhal_answers.jsonl
    python eval.py objhal --answers RUN/objhal_answers.jsonl --coco-dir coco2014/annotations \\
        --synonyms synonyms_refine.txt --extract-model gpt-3.5-turbo-0613 \\
        --extract-template RLAIF-V/eval/eval_gpt_obj_halbench.py --out RUN/objhal.json   # or --offline
"""
from __future__ import annotations

import ast
import base64
import binascii
import hashlib
import json
import logging
import os
import re

from chat_api import ChatClient, resume_jsonl, run_jsonl_jobs
from evals.chair import coco_caption_texts, coco_instance_objects, read_coco_images, singularize
from evals.files import first_record, one_protocol, protocol, read_json, read_jsonl_lines, write_json

log = logging.getLogger("povid.evals.objhal")

N_IMAGES = 300  # eval_gpt_obj_halbench.py asserts exactly 300 image ids
OFFICIAL_SHA256 = "9d732f9b73a3cc965bee6eb163b8e5248e58bd9d382eb583e9ece59933e2b580"  # RLAIF-V@83d917b prompt_template
ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
SHORT_WORDS = 3  # answers of at most this many words are not sent to the chat model: no objects

# Our paraphrase of the extraction task (used without --extract-template): NOT the official prompt, so its numbers
# are not comparable with published ones. {question} and {answer} are replaced, as in the official template.
EXTRACT_PROMPT = """Below is a question about an image and an answer to it. Take the answer as true.

Question: {question}

Answer: {answer}

List every physical object that the answer explicitly says is visible in the image. Give each object's name only:
no colours, materials or other properties. Reply with a JSON list of strings and nothing else, for example
["dog", "frisbee"]; reply [] if the answer names no object.
"""

# ---------------------------------------------------------------------------------------------- the lemmatiser
_WORD = re.compile(r"[a-z0-9]+(?:[-.][a-z0-9]+)*|n't|'[a-z]+|[^\sa-z0-9]")
KEEP = {"people"}  # singularize() maps it to "person"; WordNet and spaCy both keep "people"
# WordNet's noun suffix rules (nltk morphy), plus "es" / "ves" for its exception lists' -oes, -ves plurals
SUFFIXES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
            ("ies", "y"), ("es", ""), ("ves", "f"), ("ves", "fe"))
FUNCTION_WORDS = set("""a an the this that these those some any each every several many much few all both either
neither other another such no not of in on at by for from with without into onto upon over under above below behind
beside besides between near next to toward towards across along around through inside outside within against
among beneath underneath atop up down off out and or but nor as than so its it they them their his her my our your
there here which who whom whose what where when while being is are was were be been has have had do does did 's
n't one two three four five six seven eight nine ten eleven twelve dozen first second third""".split())
ADJECTIVES = set("""white black red blue green yellow orange brown gray grey pink purple beige golden silver colorful
colourful dark light bright pale large small big little tiny huge giant tall short long wide narrow thick thin
young old new older younger elderly wooden metallic plastic leather woolen striped spotted plaid checkered
wet dry clean dirty empty full open closed round square rectangular shiny sunny cloudy snowy grassy sandy rocky
fluffy furry cute happy""".split())


def tokenize(text: str, split_hyphens: bool = False) -> list[str]:
    """Lowercase word and punctuation tokens, clitics ("'s", "n't") split off. Hyphenated words stay whole as NLTK's
    word_tokenize keeps them, or are split as spaCy splits them (split_hyphens, for the chat model's objects)."""
    text = text.lower().replace("\u2019", "'")
    if split_hyphens:
        text = re.sub(r"(?<=[a-z0-9])-(?=[a-z0-9])", " - ", text)
    return _WORD.findall(text)


def is_noun(tokens: list[str], i: int) -> bool:
    """Our stand-in for spaCy's NN* tags (see the module docstring): the last token is a noun unless a function word;
    before it, function words, listed adjectives and -ed / -ing modifiers ("parked", "sleeping") are not."""
    t = tokens[i]
    if not re.search(r"[a-z]", t) or t in FUNCTION_WORDS:
        return False
    if i == len(tokens) - 1:
        return True
    return t not in ADJECTIVES and not (len(t) >= 5 and t.endswith(("ed", "ing")))


# ---------------------------------------------------------------------------------------------- the vocabulary
class ObjHalVocab:
    """synonyms_refine.txt with eval_gpt_obj_halbench.py's CHAIR tables: `objects` (every category and synonym),
    `inverse` (word -> category; a word listed twice keeps its last category), `double` (two-word phrase -> word)."""

    def __init__(self, path: str):
        self.source = path
        self.objects: set[str] = set()
        self.inverse: dict[str, str] = {}
        with open(path, encoding="utf-8") as f:
            rows = [[s.strip() for s in line.strip().split(", ")] for line in f if line.strip()]
        if len(rows) < 2 or any(not r[0] for r in rows):
            raise ValueError(f"{path}: not a synonyms file ('category, synonym, ...' per line)")
        for row in rows:
            self.objects.update(row)
            for s in row:
                self.inverse[s] = row[0]
        self.double = {w: w for w in self.inverse if len(w.split(" ")) >= 2}
        self.double.update({"home plate": "home plate", "train track": "train track"})
        for a in ANIMALS:
            self.double[f"baby {a}"] = self.double[f"adult {a}"] = a
        self.double.update({"passenger jet": "jet", "passenger train": "train", "bow tie": "tie",
                            "toilet seat": "toilet", "wine glas": "wine glass"})

    def lemma(self, token: str) -> str:
        """Our stand-in for WordNet's (and spaCy's) noun lemma: of the token, its suffix-rule forms and its
        singularised form, the shortest that is in the vocabulary (WordNet picks the shortest form it knows); else
        the singularised form. "people" stays "people"."""
        if token in KEEP:
            return token
        sing = singularize(token)
        forms = [token, sing] + [token[:-len(a)] + b for a, b in SUFFIXES if token.endswith(a) and len(token) > len(a)]
        known = [f for f in forms if f in self.objects]
        return min(known, key=len) if known else sing

    def canonical(self, name: str) -> str | None:  # COCO category name -> category (evals/chair.py's interface)
        return self.inverse.get(name)

    def merge_pairs(self, words: list[str], keep_single: bool) -> list[str]:
        """The official left-to-right scan: a pair in `double` becomes its word and both are consumed; other words
        are kept (caption matcher) or dropped (the chat path's double-word test)."""
        out, i = [], 0
        while i < len(words):
            pair = " ".join(words[i:i + 2])
            if pair in self.double:
                out.append(self.double[pair])
                i += 2
            else:
                if keep_single:
                    out.append(words[i])
                i += 1
        return out

    def coco_mentions(self, words: list[str]) -> list[tuple[str, str]]:
        """[(word, category)] of the words in the vocabulary, after the toilet-seat rule (a "seat" next to a
        "toilet" is not a chair)."""
        if "toilet" in words and "seat" in words:
            words = [w for w in words if w != "seat"]
        return [(w, self.inverse[w]) for w in words if w in self.objects]

    def caption_words(self, caption: str) -> list[tuple[str, str]]:
        """The official caption matcher (ground-truth captions; the whole answer with --offline)."""
        return self.coco_mentions(self.merge_pairs([self.lemma(t) for t in tokenize(caption)], keep_single=True))

    def refine_objects(self, objects: list) -> list[str]:
        """get_pred_objs_match: the chat model's object names -> double words or noun runs, deduplicated."""
        refined: list[str] = []
        for obj in objects:
            toks = tokenize(f"a {obj}", split_hyphens=True)  # the official f-string: any JSON value becomes text
            lemmas = [self.lemma(t) for t in toks]
            doubles = self.merge_pairs(lemmas, keep_single=False)
            if doubles:
                refined += doubles
                continue
            run: list[str] = []
            for i, lem in enumerate(lemmas):
                if is_noun(toks, i):
                    run.append(lem)
                elif run:
                    refined.append(" ".join(run))
                    run = []
            if run:
                refined.append(" ".join(run))
        return list(dict.fromkeys(refined))


# ---------------------------------------------------------------------------------------------- the files
GENERATE_DEFAULTS = {"max_new_tokens": 1024, "image_aspect_ratio": "pad"}  # muffin_vqa.py, where unset


def is_question_file(path: str) -> bool:
    """A JSONL file whose first line is one of obj_halbench_300_with_image.jsonl's: "image_id", "question" and the
    picture itself in "image" (base64, not a file name)."""
    first = first_record(path)
    if first is None or "image_id" not in first or not isinstance(first.get("question"), str):
        return False
    image = first.get("image")
    return isinstance(image, str) and len(image) > 256 and not image.lower().endswith((".jpg", ".jpeg", ".png"))


def question_records(path: str, image_root: str | None = None) -> list[dict]:
    """obj_halbench_300_with_image.jsonl as `generate`'s work list (evals/files.py's record layout), the image as
    bytes ("image_bytes"; there is no file; image_root is not used), question_id = the line's index as muffin_vqa.py
    numbers its answers."""
    out = []
    for n, (lineno, rec) in enumerate(read_jsonl_lines(path)):
        where = f"{path}:{lineno}"
        if not isinstance(rec.get("question"), str) or not isinstance(rec.get("image"), str) or "image_id" not in rec:
            raise ValueError(f"{where}: not an Object HalBench question line (needs 'image_id', 'question' and "
                             f"'image', the picture in base64: RLAIF-V's obj_halbench_300_with_image.jsonl)")
        try:
            data = base64.b64decode(rec["image"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}: field 'image' is not base64") from None
        out.append({"question_id": n, "prompt": rec["question"], "image_file": None, "image_bytes": data,
                    "suffix": "", "where": where,
                    "answer_base": {"question_id": n, "image_id": rec["image_id"], "prompt": rec["question"]}})
    if not out:
        raise ValueError(f"{path}: no questions")
    return out


def read_answers(path: str, questions: str | None = None) -> tuple[list[dict], int]:
    """[{"question_id", "image_id", "question", "caption"}] as load_generated_captions reads them, and the number of
    questions left unanswered (0 without a question file). Without "image_id" in the answers, the question file
    gives it by line position, as the official --org_folder does."""
    lines = read_jsonl_lines(path, required=("text",))
    qimg = None
    if questions is not None and os.path.isfile(questions) and not is_question_file(questions):
        raise ValueError(f"{questions}: not Object HalBench's question file (RLAIF-V's obj_halbench_300_with_image"
                         f".jsonl: lines of 'image_id', 'question', 'image' in base64)")
    if questions is not None:
        qimg = [rec.get("image_id") for _, rec in read_jsonl_lines(questions, required=("image_id", "question"))]
    out, seen = [], set()
    for n, (lineno, r) in enumerate(lines):
        where = f"{path}:{lineno}"
        qid = r.get("question_id", n)
        if str(qid) in seen:
            raise ValueError(f"{where}: question {qid!r} is answered twice")
        seen.add(str(qid))
        if "image_id" in r:
            image_id = r["image_id"]
        elif qimg is not None and isinstance(qid, int) and 0 <= qid < len(qimg):
            image_id = qimg[qid]
        else:
            raise ValueError(f"{where}: no 'image_id' (pass --questions, the question file, to take it from there)")
        if qimg is not None and (not isinstance(qid, int) or not 0 <= qid < len(qimg) or qimg[qid] != image_id):
            raise ValueError(f"{where}: answer {qid!r} (image {image_id!r}) is not line {qid!r} of {questions}")
        question = r.get("prompt", r.get("question"))
        if not isinstance(question, str) or not isinstance(r["text"], str):
            raise ValueError(f"{where}: needs string 'prompt' (or 'question') and 'text'")
        try:
            image_id = int(image_id)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: image_id {image_id!r} is not a COCO id") from None
        out.append({"question_id": qid, "image_id": image_id, "question": question,
                    "caption": r["text"].replace("Assistant:", "").strip()})
    return out, (len(qimg) - len(out) if qimg is not None else 0)


def coco_ground_truth(coco_dir: str, image_ids: set[int], vocab: ObjHalVocab) -> tuple[dict[int, set], dict]:
    """{image_id: categories} from COCO 2014's instances (val and/or train) and captions in coco_dir, the official
    rule; each id must be an image of some instances file."""
    def files(kind):
        found = [os.path.join(coco_dir, f"{kind}_{s}2014.json") for s in ("val", "train")]
        found = [p for p in found if os.path.isfile(p)]
        if not found:
            raise FileNotFoundError(f"{coco_dir}: no {kind}_val2014.json or {kind}_train2014.json")
        return found
    inst_files, cap_files = files("instances"), files("captions")
    images: dict[int, str] = {}
    gt: dict[int, set] = {k: set() for k in image_ids}
    for p in inst_files:  # one file in memory at a time (train2014's is large); ids are unique across files
        data = read_json(p)
        mine = read_coco_images(p, data)
        images.update(mine)
        for k, cats in coco_instance_objects(p, data, vocab, mine)[0].items():
            if k in gt:
                gt[k] |= cats
        del data
    unknown = sorted(image_ids - set(images))
    if unknown:
        raise ValueError(f"{len(unknown)} image id(s) of the answers are in no COCO instances file of {coco_dir} "
                         f"({', '.join(os.path.basename(p) for p in inst_files)}), e.g. {unknown[:3]}")
    n_caps = 0
    for p in cap_files:
        for k, texts in coco_caption_texts(p, read_json(p), image_ids, images)[0].items():
            n_caps += len(texts)
            for t in texts:
                gt[k].update(c for _, c in vocab.caption_words(t))
    return gt, {"instances": inst_files, "captions": cap_files, "n_captions": n_caps}


# ---------------------------------------------------------------------------------------------- extraction
def read_official_prompt(path: str) -> str:
    """The string assigned to `prompt_template` at the top level of RLAIF-V's eval/eval_gpt_obj_halbench.py."""
    with open(path, encoding="utf-8") as f:
        try:
            tree = ast.parse(f.read(), filename=path)
        except SyntaxError as e:
            raise ValueError(f"{path}: not a Python file ({e})") from None
    found = [n.value.value for n in tree.body if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "prompt_template" for t in n.targets)
             and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)]
    if len(found) != 1 or "{question}" not in found[0] or "{answer}" not in found[0]:
        raise ValueError(f"{path}: expected one top-level string `prompt_template` with {{question}} and {{answer}} "
                         f"(RLAIF-V's eval/eval_gpt_obj_halbench.py)")
    return found[0]


def make_extractor(model: str, template_file: str | None = None) -> dict:
    text = EXTRACT_PROMPT if template_file is None else read_official_prompt(template_file)
    sha = _sha(text)
    if template_file is not None and sha != OFFICIAL_SHA256:
        log.warning("%s: prompt differs from RLAIF-V's (sha256 %s, not %s): numbers may not compare with published "
                    "ones", template_file, sha[:12], OFFICIAL_SHA256[:12])
    return {"name": "povid" if template_file is None else "official", "file": template_file, "model": model,
            "text": text, "sha256": sha}


def extract_prompt(question: str, answer: str, extractor: dict) -> str:
    return extractor["text"].replace("{question}", question).replace("{answer}", answer)  # the official replace()


def parse_object_list(content: str) -> list:
    """The official parse: JSON; failing that, when the reply holds '["', its last line as JSON. Anything else (and,
    here, a JSON value that is not a list) is an error, and the request is retried."""
    try:
        value = json.loads(content)
    except ValueError:
        if '["' not in content:
            raise ValueError("reply is not a JSON list") from None
        try:
            value = json.loads(content.strip().split("\n")[-1])
        except ValueError:
            raise ValueError("reply is not a JSON list") from None
    if not isinstance(value, list):  # the official code would iterate a string's characters or a dict's keys
        raise ValueError(f"reply is JSON but not a list ({type(value).__name__})")
    return value


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _valid_reply(text: str) -> None:
    parse_object_list(text)  # raises ValueError: the client retries


def extract_objects(answers: list[dict], extractor: dict, log_path: str, workers: int = 4,
                    client: ChatClient | None = None, timeout: float = 100.0) -> dict[str, list]:
    """{question_id (str): object names} for every answer, resumable through log_path (one JSON line per answer).
    Answers of <= 3 words get [] without a request (official). Items that still fail are listed in the error. A log
    line made by another model or prompt, or from another answer text (a re-generated answers file), is an error."""
    client = client or ChatClient()
    text_sha = {str(a["question_id"]): _sha(a["caption"]) for a in answers}
    for r in resume_jsonl(log_path, "question_id"):
        if (r.get("model"), r.get("prompt_sha256")) != (extractor["model"], extractor["sha256"]):
            raise ValueError(f"{log_path}:{r['question_id']}: extracted by {r.get('model')!r} with prompt "
                             f"{str(r.get('prompt_sha256'))[:12]}, not {extractor['model']!r} / "
                             f"{extractor['sha256'][:12]}: use another --extract-log")
        if str(r["question_id"]) in text_sha and r.get("answer_sha256") != text_sha[str(r["question_id"])]:
            raise ValueError(f"{log_path}: question {r['question_id']!r} was extracted from another answer text "
                             f"(answers regenerated?): use another --extract-log, or delete this one")

    def work(a):
        rec = {"question_id": a["question_id"], "model": extractor["model"], "prompt_sha256": extractor["sha256"],
               "answer_sha256": text_sha[str(a["question_id"])]}
        if len(a["caption"].strip().split()) <= SHORT_WORDS:
            return {**rec, "objects": [], "short": True}
        messages = [{"role": "system", "content": extract_prompt(a["question"], a["caption"], extractor)}]
        reply = client.chat(messages, extractor["model"], temperature=0.2, max_tokens=512, timeout=timeout,
                            validate=_valid_reply)
        return {**rec, "objects": parse_object_list(reply), "reply": reply}

    summary = run_jsonl_jobs(answers, lambda a: a["question_id"], work, log_path, workers=workers,
                             key_field="question_id")
    if summary.failed:
        raise RuntimeError(f"object extraction failed for {len(summary.failed)} answer(s) (see "
                           f"{log_path[:-6]}.failed.jsonl); run again to retry them: {summary}")
    return {str(r["question_id"]): r["objects"] for r in resume_jsonl(log_path, "question_id")}


# ---------------------------------------------------------------------------------------------- scoring
def objhal_scores(answers: list[dict], mentions: dict[str, list[tuple[str, str]]], gt: dict[int, set]) -> dict:
    """compute_chair's sums. mentions: {question_id: [(word, category)]} per answer; gt: {image_id: categories}.
    Rates are fractions; None where the official script would divide by zero."""
    n_caps = n_coco_caps = n_hall_caps = n_hall_words = n_words = n_gt = n_correct_cls = total_len = 0
    per = {}
    for a in answers:
        ms = mentions[str(a["question_id"])]
        truth = gt[a["image_id"]]
        hall = [(w, c) for w, c in ms if c not in truth]
        correct = {c for _, c in ms if c in truth}
        total_len += len(a["caption"].strip().split(" "))
        n_gt += len(truth)
        n_words += len(ms)
        n_hall_words += len(hall)
        n_correct_cls += len(correct)
        n_caps += 1
        n_hall_caps += bool(hall)
        n_coco_caps += bool(ms)
        per[str(a["question_id"])] = {"image_id": a["image_id"], "mentions": [list(m) for m in ms],
                                      "hallucinated": [list(m) for m in hall], "gt": sorted(truth)}

    def div(x, y):
        return x / y if y else None
    chair_s_refine, chair_i = div(n_hall_caps, n_coco_caps), div(n_hall_words, n_words)
    m = {"chair_s": div(n_hall_caps, n_caps), "response_hall": chair_s_refine, "mention_hall": chair_i,
         "recall": div(n_correct_cls, n_gt), "length": div(total_len, n_caps),
         "correct_rate": None if chair_s_refine is None else 1 - chair_s_refine,
         "object_correct_rate": None if chair_i is None else 1 - chair_i,
         "n_responses": n_caps, "n_coco_responses": n_coco_caps, "n_hallucinated_responses": n_hall_caps,
         "n_mentions": n_words, "n_hallucinated_mentions": n_hall_words, "n_correct_categories": n_correct_cls,
         "n_gt_categories": n_gt, "n_images": len({a["image_id"] for a in answers})}
    return {"metrics": m, "per_response": per}


def summary_lines(m: dict) -> list[str]:
    """summarize_gpt_obj_halbench_review.py's printout (its counts are floats in the official code)."""
    return [f"Response Hall   : {m['response_hall'] * 100:.2f}", f"Object Hall     : {m['mention_hall'] * 100:.2f}",
            "", f"Response Correct: {m['correct_rate'] * 100:.2f}",
            f"Object Correct  : {m['object_correct_rate'] * 100:.2f}", f"Object Recall   : {m['recall'] * 100:.2f}",
            f"Average Length  : {m['length']:.2f}", f"COCO Sent Number: {float(m['n_coco_responses'])}",
            f"COCO Word Number: {float(m['n_correct_categories'])}", f"GT Word Number  : {float(m['n_gt_categories'])}"]


# ---------------------------------------------------------------------------------------------- command
def cmd_objhal(a) -> dict:
    vocab = ObjHalVocab(a.synonyms)
    answers, n_missing = read_answers(a.answers, a.questions)
    if not answers:
        raise ValueError(f"{a.answers}: no answers")
    raw = [r for _, r in read_jsonl_lines(a.answers)]
    one_protocol(raw, a.answers)
    gt, gt_info = coco_ground_truth(a.coco_dir, {r["image_id"] for r in answers}, vocab)
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.answers)), "objhal.json")
    if a.offline:
        mentions = {str(r["question_id"]): vocab.caption_words(r["caption"]) for r in answers}
        how = {"name": "offline", "comparable": False,
               "note": "RLAIF-V's no-chat branch (CHAIR word matching on the answer) with povid's lemmatiser; NOT "
                       "comparable with published Object HalBench numbers (those extract objects with gpt-3.5)"}
    else:
        if not a.extract_model:
            raise ValueError("objhal: pass --extract-model (the official one: gpt-3.5-turbo-0613) or --offline")
        ex = make_extractor(a.extract_model, a.extract_template)
        log_path = a.extract_log or os.path.splitext(out)[0] + "_extract.jsonl"
        objs = extract_objects(answers, ex, log_path, workers=a.workers)
        mentions = {str(r["question_id"]): vocab.coco_mentions(vocab.refine_objects(objs[str(r["question_id"])]))
                    for r in answers}
        how = {"name": f"chat ({ex['name']} prompt)", "model": ex["model"], "prompt_file": ex["file"],
               "prompt_sha256": ex["sha256"], "log": log_path,
               "comparable": ex["name"] == "official" and ex["sha256"] == OFFICIAL_SHA256,
               "note": "objects listed by the chat model, refined with povid's stand-in for spaCy (module docstring)"}
    s = objhal_scores(answers, mentions, gt)
    m = s["metrics"]
    m.update({"n_missing": n_missing, "n_short": sum(len(r["caption"].split()) <= SHORT_WORDS for r in answers),
              "full_benchmark": m["n_images"] == N_IMAGES and n_missing == 0})
    write_json(out, {"kind": "objhal", "answers": a.answers, "questions": a.questions, "coco": gt_info,
                     "synonyms": a.synonyms, "extractor": how, "protocol": protocol(raw), "metrics": m,
                     "per_response": s["per_response"]})
    if m["response_hall"] is not None and m["mention_hall"] is not None:
        print("\n".join(summary_lines(m)))
    print(f"Object HalBench ({how['name']}{'' if how['comparable'] else ', NOT comparable with published numbers'}):"
          f" {m['n_responses']} answers, {m['n_images']} images, {n_missing} unanswered, {m['n_short']} of <= 3 "
          f"words -> {out}")
    if not m["full_benchmark"]:
        log.warning("objhal: %d images, not Object HalBench's %d: not comparable with published scores",
                    m["n_images"], N_IMAGES)
    return m


def add_arguments(s) -> None:
    s.add_argument("--answers", required=True, help="answers JSONL (generate's or RLAIF-V's muffin_vqa.py)")
    s.add_argument("--coco-dir", required=True, help="COCO 2014 annotations: instances_/captions_{val,train}2014.json")
    s.add_argument("--synonyms", required=True, help="RLAIF-V eval/data/synonyms_refine.txt")
    s.add_argument("--questions", default=None,
                   help="obj_halbench_300_with_image.jsonl: checks every answer against its line, counts the "
                        "unanswered, and gives image ids to answers without one")
    s.add_argument("--offline", action="store_true", help="no chat model: CHAIR word matching (not comparable)")
    s.add_argument("--extract-model", default=None, help="chat model listing the objects (official: "
                                                         "gpt-3.5-turbo-0613; OPENAI_BASE_URL / OPENAI_API_KEY)")
    s.add_argument("--extract-template", default=None,
                   help="RLAIF-V's eval/eval_gpt_obj_halbench.py, for the official prompt (default: ours)")
    s.add_argument("--extract-log", default=None, help="extraction replies JSONL, resumable (default: "
                                                       "<out>_extract.jsonl)")
    s.add_argument("--workers", type=int, default=4)
    s.add_argument("--out", default=None, help="metrics JSON (default: objhal.json next to the answers)")


COMMANDS = {"objhal": ("Object HalBench response / mention hallucination rates", add_arguments, cmd_objhal)}
