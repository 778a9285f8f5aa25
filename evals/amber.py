"""AMBER (Wang et al. 2023, "An LLM-free Multi-dimensional Benchmark for MLLMs Hallucination Evaluation", arXiv
2311.07397): 1,004 images, one "Describe this image." each (generative) and 14,216 yes/no questions (discriminative:
existence, attribute = state / number / action, relation), scored without a judge as its `inference.py` does
(junyangwang0410/AMBER @534babf).

Files (the repository's data/ folder, read as published): annotations.json (a list whose item i has id i+1: the
official script finds an answer's truth at annotations[id-1]; generative items hold "truth" and "hallu" object lists,
discriminative ones "truth" = "yes"/"no" and a "type"), relation.json ({object: [associated words]}; its keys and values
are the closed 418-word vocabulary), safe_words.txt (9 words never counted as hallucinated), data/query/query_*.json
(JSON lists of {"id", "image": "AMBER_n.jpg", "query"}; ids 1..1004 are generative), and the images (a separate
download), under --image-root.

Generative scoring, per answer (official rules, each named in the tests):
  nouns     NLTK: word_tokenize on the raw text, pos_tag, keep NN* tags, WordNetLemmatizer().lemmatize (noun);
            keep those in the vocabulary (exact, case-sensitive: a sentence-initial "Dog" is not "dog"); repeats count.
  each noun, in order: a safe word -> not hallucinated; equal to a word of the truth objects or their associations ->
            the first such word's truth object is covered, not hallucinated; equal to a word of the hallu objects or
            their associations -> that hallu object is hit (and scoring goes on); the first hallu word whose spaCy
            en_core_web_lg similarity is > 0.8 -> its object is hit; the first truth word with similarity > 0.8 ->
            covered, not hallucinated; otherwise a hallucinated mention. Association words come before the objects
            themselves in the search, so a word that is both marks the object it is associated with.
  CHAIR = hallucinated / kept nouns, Cover = covered / truth objects (a repeated truth object counts twice, the
  second never covered), Hal = answers with a hallucinated noun / answers, Cog = hit / hallu objects; pooled.
Discriminative: only the exact strings "Yes" and "No" are answers (anything else is wrong, and counted here as
unparsed); "No" is the positive class: precision = correct "No" / answered "No", recall = correct "No" / truth "no";
per dimension, and overall. Every count starts at 0.001 (data/metrics.txt; attribute sums its three sub-blocks'
counts, so its start is 0.003) and every value is printed as round(100 * x, 1); F1 = 2PR / (P + R + 1e-4) from the
rounded P and R (existence: + 1e-3). The AMBER score is (100 - CHAIR + F1) / 2 with the overall F1 (the README's
table; the script does not print it). `amber` prints what the script prints, line for line (`official_lines`).

The official path needs nltk with its punkt, averaged_perceptron_tagger and wordnet data, and spaCy with
en_core_web_lg; --matcher official uses them (auto: when all are installed). Neither the NLTK data nor en_core_web_lg
is on a package registry, so the default on most machines is the built-in matcher (evals/amber_words.py): exact for
the lemmatiser on the vocabulary, NLTK's cuts for tokens, approximate for tags, and similarity = equality. Its
differences are listed and measured in docs/amber.md. Either way, `amber` writes AMBER's own response file
([{"id", "response"}]) beside the metrics, so the official script can score the same answers unchanged.

    python eval.py generate --recipe recipes/eval.toml:amber --checkpoint CKPT --questions $AMBER/data/query/query_all.json \\
        --image-root $AMBER/image --output RUN/amber_answers.jsonl
    python eval.py amber --answers RUN/amber_answers.jsonl --questions $AMBER/data/query/query_all.json \\
        --data $AMBER/data [--matcher auto|official|builtin] [--out RUN/amber.json]
"""
from __future__ import annotations

import argparse
import os

from evals import amber_words
from evals.files import SHORT_ANSWER_SUFFIX, first_char, one_protocol, protocol, read_json, read_jsonl, write_json

N_GENERATIVE = 1004  # README: generative ids are 1..1004
DIMENSIONS = {"discriminative-hallucination": ("existence", None),
              "discriminative-attribute-state": ("attribute", "state"),
              "discriminative-attribute-number": ("attribute", "number"),
              "discriminative-attribute-action": ("attribute", "action")}  # any other type: relation (official else)
START = 0.001  # data/metrics.txt: every denominator starts here, so an empty block scores 0, never a ZeroDivision


# ---------------------------------------------------------------------------------------------- files
class AmberData:
    """annotations.json, relation.json and safe_words.txt of AMBER's data/ folder, checked."""

    def __init__(self, data_dir: str):
        ann_path, rel_path = os.path.join(data_dir, "annotations.json"), os.path.join(data_dir, "relation.json")
        safe_path = os.path.join(data_dir, "safe_words.txt")
        for p in (ann_path, rel_path, safe_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p}: not found; --data is AMBER's data/ folder (annotations.json, "
                                        f"relation.json, safe_words.txt)")
        self.relation = read_json(rel_path)
        if not isinstance(self.relation, dict) or not all(
                isinstance(v, list) and all(isinstance(w, str) for w in v) for v in self.relation.values()):
            raise ValueError(f"{rel_path}: expected {{object: [associated words]}} (AMBER's relation.json)")
        self.vocabulary = set(self.relation) | {w for ws in self.relation.values() for w in ws}
        with open(safe_path, encoding="utf-8") as f:  # the official reader cuts at "\n" only
            self.safe_words = {line.split("\n")[0] for line in f}
        ann = read_json(ann_path)
        if not isinstance(ann, list):
            raise ValueError(f"{ann_path}: expected a JSON list (AMBER's annotations.json)")
        self.items: dict[int, dict] = {}
        for i, a in enumerate(ann):
            if not isinstance(a, dict) or a.get("id") != i + 1 or "type" not in a or "truth" not in a:
                raise ValueError(f"{ann_path}: item {i}: expected {{'id': {i + 1}, 'type', 'truth', ...}} (the official "
                                 f"scorer reads item id-1 for id)")
            if a["type"] == "generative":
                for key in ("truth", "hallu"):
                    unknown = [w for w in a.get(key, []) if w not in self.relation]
                    if not isinstance(a.get(key), list) or unknown:
                        raise ValueError(f"{ann_path}: item {i} (id {i + 1}): {key!r} must be a list of relation.json "
                                         f"keys{'; unknown: ' + ', '.join(unknown) if unknown else ''}")
            elif a["truth"] not in ("yes", "no"):
                raise ValueError(f"{ann_path}: item {i} (id {i + 1}): truth {a['truth']!r} is not 'yes' or 'no'")
            self.items[i + 1] = a


def read_queries(path: str) -> list[dict] | None:
    """The records of an AMBER query file, or None when the file is not one (a JSON list of {id, image, query})."""
    if first_char(path) != "[":
        return None
    data = read_json(path)
    if not data or not isinstance(data[0], dict) or set(data[0]) != {"id", "image", "query"}:
        return None
    seen = set()
    for i, q in enumerate(data):
        if not isinstance(q, dict) or set(q) != {"id", "image", "query"} or not isinstance(q["id"], int) \
                or not isinstance(q["image"], str) or not isinstance(q["query"], str):
            raise ValueError(f"{path}: item {i}: expected {{'id': int, 'image': str, 'query': str}} (an AMBER query file)")
        if q["id"] in seen:
            raise ValueError(f"{path}: item {i}: id {q['id']} appears twice")
        seen.add(q["id"])
    return data


def is_question_file(path: str) -> bool:
    return read_queries(path) is not None


def question_records(path: str, image_root: str | None = None, short_answer_suffix: bool | None = None) -> list[dict]:
    """`generate`'s work list for an AMBER query file. The short-answer suffix goes to the yes/no questions (ids
    above 1004) only, unless short_answer_suffix (--short-answer-suffix / --no-short-answer-suffix) says otherwise."""
    data = read_queries(path)
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    out = []
    for i, q in enumerate(data):
        add = q["id"] > N_GENERATIVE if short_answer_suffix is None else short_answer_suffix
        prompt = q["query"] + (SHORT_ANSWER_SUFFIX if add else "")
        out.append({"question_id": q["id"], "prompt": prompt, "image_file": os.path.join(root, q["image"]),
                    "suffix": SHORT_ANSWER_SUFFIX if add else "", "where": f"{path}: item {i} (id {q['id']})",
                    "answer_base": {"question_id": q["id"], "image": q["image"], "question": q["query"],
                                    "prompt": prompt}})
    return out


# ---------------------------------------------------------------------------------------------- matchers
def official_matcher():
    """(nouns(text), similar(a, b), description) of the official path, or raise ImportError / LookupError naming
    what is missing. Imported only when asked for: none of it is a dependency of the project."""
    import nltk
    from nltk.stem import WordNetLemmatizer
    import spacy
    for name in ("tokenizers/punkt_tab", "taggers/averaged_perceptron_tagger_eng", "corpora/wordnet"):
        nltk.data.find(name)  # LookupError names the resource and where it looked
    nlp = spacy.load("en_core_web_lg")
    lem = WordNetLemmatizer()
    cache: dict[tuple[str, str], bool] = {}

    def nouns(text: str) -> list[str]:
        return [lem.lemmatize(w) for w, tag in nltk.pos_tag(nltk.word_tokenize(text)) if tag.startswith("NN")]

    def similar(a: str, b: str) -> bool:  # both words are in the closed vocabulary: cache every pair
        if (a, b) not in cache:
            cache[a, b] = nlp(a).similarity(nlp(b)) > 0.8
        return cache[a, b]

    desc = f"official: nltk {nltk.__version__} (punkt_tab, averaged_perceptron_tagger_eng, wordnet), spaCy " \
           f"{spacy.__version__} en_core_web_lg {nlp.meta.get('version')}"
    return nouns, similar, desc


def make_matcher(kind: str, vocabulary: set[str]):
    """'official', 'builtin' or 'auto' (official when installed, else builtin) -> (nouns, similar, description)."""
    if kind in ("official", "auto"):
        try:
            return official_matcher()
        except (ImportError, LookupError, OSError) as e:
            if kind == "official":
                raise SystemExit(f"amber --matcher official: {type(e).__name__}: {str(e).strip().splitlines()[0]}")
    return amber_words.noun_finder(vocabulary), lambda a, b: a == b, amber_words.DESCRIPTION


# ---------------------------------------------------------------------------------------------- scoring
def _mark(words: list[str], parents: list[int], flags: list[int], j: int) -> None:
    """The official bookkeeping: words = associations (parents[j] = their object's index) then the objects; flags
    has one slot per object."""
    n_assoc = len(words) - len(flags)
    flags[parents[j] if j < n_assoc else j - n_assoc] = 1


def score_caption(nouns: list[str], truth: list[str], hallu: list[str], data: AmberData, similar) -> dict:
    """One generative answer's counts under the official rules (module docstring)."""
    kept = [n for n in nouns if n in data.vocabulary]
    lists = {}
    for name, objs in (("safe", truth), ("ha", hallu)):
        words, parents = [], []
        for idx, w in enumerate(objs):
            words += data.relation[w]
            parents += [idx] * len(data.relation[w])
        lists[name] = (words + list(objs), parents, [0] * len(objs))
    safe_words, safe_par, covered = lists["safe"]
    ha_words, ha_par, hit = lists["ha"]
    hallucinated = []
    for noun in kept:
        if noun in data.safe_words:
            continue
        if noun in safe_words:
            _mark(safe_words, safe_par, covered, safe_words.index(noun))
            continue
        if noun in ha_words:
            _mark(ha_words, ha_par, hit, ha_words.index(noun))
        j = next((j for j, w in enumerate(ha_words) if similar(noun, w)), None)
        if j is not None:
            _mark(ha_words, ha_par, hit, j)
        j = next((j for j, w in enumerate(safe_words) if similar(noun, w)), None)
        if j is not None:
            _mark(safe_words, safe_par, covered, j)
            continue
        hallucinated.append(noun)
    return {"nouns": kept, "hallucinated": hallucinated, "covered": sum(covered), "n_truth": len(truth),
            "hit": sum(hit), "n_hallu": len(hallu)}


def _pct(num: float, den: float) -> float:
    return round(num / den * 100, 1)


def _f1(p: float, r: float, eps: float) -> float:
    return round(2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + eps) * 100, 1)


def _block(c: dict, eps: float = 1e-4) -> dict:
    p, r = _pct(c["ans_no_correct"], c["ans_no"]), _pct(c["no_correct"], c["no"])
    return {"accuracy": _pct(c["correct"], c["n"]), "precision": p, "recall": r, "f1": _f1(p, r, eps),
            "n": c["questions"], "n_unparsed": c["unparsed"]}


def amber_scores(answers: dict[int, str], data: AmberData, nouns, similar) -> dict:
    """answers: {id: response}. Returns the official printed values (percent, one decimal) per block, the AMBER
    score, counts, and per-answer details of the generative part."""
    g = {k: START for k in ("chair_num", "cover_num", "cog_num", "hal_num")}
    g.update(chair=0, cover=0, cog=0, hal_free=0)
    blocks = {k: {"n": START, "correct": 0, "no": START, "no_correct": 0, "ans_no": START, "ans_no_correct": 0,
                  "unparsed": 0, "questions": 0} for k in ("all", "existence", "state", "number", "action", "relation")}
    per_caption, n_gen, n_empty = {}, 0, 0
    for qid, text in answers.items():
        item = data.items[qid]
        if item["type"] == "generative":
            s = score_caption(nouns(text), item["truth"], item["hallu"], data, similar)
            n_gen += 1
            n_empty += not text.strip()
            g["chair"] += len(s["hallucinated"])
            g["chair_num"] += len(s["nouns"])
            g["cover"] += s["covered"]
            g["cover_num"] += s["n_truth"]
            g["cog"] += s["hit"]
            g["cog_num"] += s["n_hallu"]
            g["hal_free"] += not s["hallucinated"]
            g["hal_num"] += 1
            per_caption[str(qid)] = s
            continue
        dim, sub = DIMENSIONS.get(item["type"], ("relation", None))
        truth_no = item["truth"] == "no"
        for b in (blocks["all"], blocks[sub or dim]):
            b["questions"] += 1
            b["n"] += 1
            b["correct"] += text == ("No" if truth_no else "Yes")
            b["no"] += truth_no
            b["no_correct"] += truth_no and text == "No"
            b["ans_no"] += text == "No"
            b["ans_no_correct"] += truth_no and text == "No"
            b["unparsed"] += text not in ("Yes", "No")
    out: dict = {"n": len(answers), "n_generative": n_gen, "n_empty_generative": n_empty}
    if n_gen:
        out["generative"] = {"chair": _pct(g["chair"], g["chair_num"]), "cover": _pct(g["cover"], g["cover_num"]),
                             "hal": round(100 - g["hal_free"] / g["hal_num"] * 100, 1),
                             "cog": _pct(g["cog"], g["cog_num"]), "n_mentions": round(g["chair_num"] - START),
                             "n_hallucinated": g["chair"]}
    # the script pools attribute from its three sub-blocks' counts, so each of their 0.001 starts adds up (0.003)
    parts = [blocks[k] for k in ("state", "number", "action")]
    blocks["attribute"] = {k: parts[0][k] + parts[1][k] + parts[2][k] for k in parts[0]}
    for name, b in blocks.items():
        if b["questions"]:
            out[name if name != "all" else "discriminative"] = _block(b, 1e-3 if name == "existence" else 1e-4)
    dims = ("existence", "attribute", "relation")
    if n_gen and all(d in out for d in dims):  # the README's score: generative CHAIR and the overall F1
        out["amber_score"] = (100 - out["generative"]["chair"] + out["discriminative"]["f1"]) / 2
    out["per_caption"] = per_caption
    return out


# ---------------------------------------------------------------------------------------------- command
def cmd_amber(a) -> dict:
    data = AmberData(a.data)
    queries = read_queries(a.questions)
    if queries is None:
        raise ValueError(f"{a.questions}: not an AMBER query file (a JSON list of {{id, image, query}}; "
                         f"AMBER's data/query/query_*.json)")
    asked = {q["id"] for q in queries}
    unknown = sorted(asked - set(data.items))
    if unknown:
        raise ValueError(f"{a.questions}: {len(unknown)} ids are not in {a.data}/annotations.json, e.g. {unknown[:5]}")
    answers = read_jsonl(a.answers, required=("question_id", "text"), key="question_id")
    one_protocol(answers, a.answers, ignore=("suffix",))
    by_id: dict[int, str] = {}
    for i, r in enumerate(answers, 1):
        qid = r["question_id"]
        if not isinstance(qid, int) or qid not in asked:
            raise ValueError(f"{a.answers}: answer {i}: question_id {qid!r} is not in {a.questions}")
        by_id[qid] = r["text"]
    missing = sorted(asked - set(by_id))
    if missing:
        raise ValueError(f"{a.answers}: {len(missing)} of the {len(asked)} questions of {a.questions} have no answer, "
                         f"e.g. ids {missing[:5]}; finish `generate` first")
    by_id = {q["id"]: by_id[q["id"]] for q in queries}  # the response file's order: float sums as inference.py's
    nouns, similar, matcher = make_matcher(a.matcher, data.vocabulary)
    scores = amber_scores(by_id, data, nouns, similar)
    per_caption = scores.pop("per_caption")
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.answers)), "amber.json")
    responses = a.response_file or os.path.splitext(out)[0] + "_responses.json"
    write_json(responses, [{"id": q["id"], "response": by_id[q["id"]]} for q in queries])
    metrics = {"official_printed": scores, **_fractions(scores)}
    write_json(out, {"kind": "amber", "matcher": matcher, "comparable": matcher.startswith("official"),
                     "answers": a.answers, "questions": a.questions, "data": a.data, "response_file": responses,
                     "protocol": protocol(answers), "metrics": metrics, "per_caption": per_caption})
    _print(scores, matcher, out, responses)
    return metrics


def _fractions(s: dict) -> dict:
    """The report's keys: rates as fractions (the official printed percent / 100), counts as they are."""
    m = {"n_empty_generative": s["n_empty_generative"]}
    for k, v in s.get("generative", {}).items():
        m[k] = v / 100 if k in ("chair", "cover", "hal", "cog") else v
    for block in ("discriminative", "existence", "attribute", "state", "number", "action", "relation"):
        if block in s:
            pre = "" if block == "discriminative" else block + "_"
            m.update({pre + k: (v / 100 if k in ("accuracy", "precision", "recall", "f1") else v)
                      for k, v in s[block].items()})
    # after the blocks: the discriminative block's own "n" (its question count) must not stand for all answers
    m.update(n=s["n"], n_generative=s["n_generative"], n_discriminative=s["n"] - s["n_generative"])
    if "amber_score" in s:
        m["amber_score"] = s["amber_score"] / 100
    return m


# inference.py's printout, in its order: (block, heading as it spells it, the --evaluation_type flag that prints it)
OFFICIAL_PRINTOUT = (("generative", "Generative Task:", "g"), ("discriminative", "Descriminative Task:", "d"),
                     ("existence", "Exsitence:", "de"), ("attribute", "Attribute:", "da"), ("state", "State:", "da"),
                     ("number", "Number:", "da"), ("action", "Action:", "da"), ("relation", "Relation:", "dr"))


def official_lines(s: dict) -> list[str]:
    """inference.py's printout, line for line (tabs, trailing spaces and blank lines as its print calls make them),
    of the dimensions answered: all four = --evaluation_type a, else g, d, de, da or dr. Within a printed dimension
    a sub-block without questions prints 0.0 four times, as the script's 0 / 0.001 does."""
    flags = {"g": "generative" in s, "de": "existence" in s, "dr": "relation" in s,
             "da": any(k in s for k in ("state", "number", "action"))}
    flags["d"] = flags["de"] and flags["da"] and flags["dr"]  # the script prints the pooled block only then
    empty = {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    lines = []
    for name, heading, flag in OFFICIAL_PRINTOUT:
        if not flags[flag]:
            continue
        if name == "generative":
            g = s[name]
            lines += [heading, f"CHAIR:\t\t {g['chair']}", f"Cover:\t\t {g['cover']}", f"Hal:\t\t {g['hal']}",
                      f"Cog:\t\t {g['cog']} ", ""]  # print(..., "\n"): a space, then an empty line
            continue
        b = s.get(name, empty)
        lines += [heading, f"Accuracy:\t {b['accuracy']}", f"Precision:\t {b['precision']}",
                  f"Recall:\t\t {b['recall']}"]
        lines += [f"F1:\t\t {b['f1']}"] if name == "relation" else [f"F1:\t\t {b['f1']} ", ""]
    return lines


def _print(s: dict, matcher: str, out: str, responses: str) -> None:
    """inference.py's printout, then ours (lines starting "ours:"): bench/eval_parity.py compares the first part."""
    lines = [f"AMBER ({matcher})"] + official_lines(s)
    if "amber_score" in s:
        lines.append(f"ours: AMBER score {s['amber_score']:.2f} = (100 - CHAIR + F1) / 2 (AMBER's README; "
                     f"inference.py does not print it)")
    unparsed = s.get("discriminative", {}).get("n_unparsed", 0)
    lines.append(f"ours: {s['n_generative']} descriptions ({s['n_empty_generative']} empty), "
                 f"{s['n'] - s['n_generative']} yes/no questions ({unparsed} answers not exactly Yes/No, scored wrong)")
    print("\n".join(lines) + f"\n-> {out}; AMBER's response file {responses}")


def _args_amber(p: argparse.ArgumentParser) -> None:
    p.add_argument("--answers", required=True, help="generate's answers to an AMBER query file")
    p.add_argument("--questions", required=True, help="the query file given to generate (data/query/query_*.json)")
    p.add_argument("--data", required=True, help="AMBER's data/ folder (annotations.json, relation.json, "
                                                  "safe_words.txt)")
    p.add_argument("--matcher", default="auto", choices=["auto", "official", "builtin"],
                   help="nouns and similarity: official = NLTK + spaCy en_core_web_lg (must be installed), builtin = "
                        "evals/amber_words.py, auto = official when installed")
    p.add_argument("--out", default=None, help="metrics JSON (default: amber.json next to the answers)")
    p.add_argument("--response-file", default=None,
                   help="AMBER's [{id, response}] file for its inference.py (default: <out>_responses.json)")


COMMANDS = {"amber": ("AMBER generative CHAIR / Cover / Hal / Cog, discriminative accuracy / P / R / F1, AMBER score",
                      _args_amber, cmd_amber)}
