"""Parity of evals/sqa.py, evals/mme.py, evals/objhal.py and evals/amber.py with the official scoring scripts: each
official script, from your own checkout and unchanged, scores the hand-built answer sets of
tests/test_eval_{sqa,mme,objhal,amber}.py (and, for AMBER, the sets below) on the public-schema tree of
rehearsal/public_bench.py, and its printout is compared line by line with ours and with the printout the tests quote.
Nothing official is copied into this repository; the scripts run in a subprocess.

    python bench/eval_parity.py --python /path/to/venv/bin/python \\
        --llava LLaVA --scienceqa ScienceQA --mme-convert eval/MME/convert_answer_to_mme.py \\
        --mme-tool eval_tool --rlaifv RLAIF-V --amber AMBER --nltk-data nltk_data

  --llava        haotian-liu/LLaVA checkout (llava/eval/eval_science_qa.py)
  --scienceqa    lupantech/ScienceQA checkout (tools/evaluate_acc.py; its assert on 4241 problems is skipped)
  --mme-convert  convert_answer_to_mme.py from LLaVA's eval.zip (playground/data/eval/MME/)
  --mme-tool     MME's eval_tool/ (calculation.py; run on the subtasks present, as it has no option for a subset)
  --rlaifv       RLHF-V/RLAIF-V checkout (eval/eval_gpt_obj_halbench.py, eval/summarize_gpt_obj_halbench_review.py)
  --amber        junyangwang0410/AMBER checkout (inference.py, data/: its metrics.txt and, for one answer set, the
                 published annotations, relation.json and safe_words.txt)
  --nltk-data    a folder holding corpora/wordnet (WordNet 3.0, e.g. Debian's wordnet-base + wordnet-sense-index
                 with a lexnames file) for AMBER's WordNetLemmatizer
  --python       an interpreter with scikit-learn, pandas, jsonlines, tqdm and requests (the official scripts' needs),
                 and nltk and spacy for AMBER

Object HalBench's script imports spaCy (en_core_web_trf), NLTK's WordNet and OpenAI's client, none of which can be
installed here: the run replaces spacy.load, nltk.word_tokenize, WordNetLemmatizer and the chat call with our
lemmatiser (evals/objhal.py tokenize / ObjHalVocab.lemma / is_noun) and the tests' canned replies. The comparison
therefore checks everything but the lemmatiser (double words, noun runs, dedup, the toilet-seat rule, the sums and
the printout); the lemmatiser's own differences are the LEMMA_CASES of tests/test_eval_objhal.py.
AMBER's inference.py runs with the real nltk (word_tokenize's Treebank rules, pos_tag's wrapper, WordNetLemmatizer
on WordNet 3.0) and the real spaCy; three pieces of data that no registry ships are replaced inside the subprocess
(AMBER_DRIVER): punkt's English parameters by NLTK's untrained Punkt, the tagger's model by evals/amber_words.is_noun,
en_core_web_lg by spacy.blank("en") (no vectors: similarity 1.0 for the same word, else 0.0, our matcher's
equality). Yes/no answer sets run with all three made to raise if touched. Each generative answer's nouns
(inference.py's extract_nouns, vocabulary-filtered) are compared with evals/amber_words.py's too.
Exit status 0 when every printout matches.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import eval as ev  # noqa: E402
from evals import amber, amber_words, mme, objhal, sqa  # noqa: E402
from rehearsal.public_bench import make_public_bench  # noqa: E402
import test_eval_amber as ta  # noqa: E402
import test_eval_mme as tm  # noqa: E402
import test_eval_objhal as to  # noqa: E402
import test_eval_sqa as ts  # noqa: E402


def run(py: str, args: list[str], cwd: str, env: dict | None = None) -> str:
    r = subprocess.run([py, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if r.returncode:
        raise SystemExit(f"{' '.join(args[:2])} failed in {cwd}:\n{r.stderr[-2000:]}")
    return r.stdout


def compare(name: str, official: list[str], ours: list[str], quoted: list[str] | None) -> bool:
    ok = official == ours and (quoted is None or quoted == official[:len(quoted)])
    print(f"{name}: {'identical' if ok else 'DIFFERENT'} ({len(official)} lines)")
    if not ok:
        for i, (a, b) in enumerate(zip(official, ours)):
            if a != b:
                print(f"  line {i}: official {a!r}\n          ours     {b!r}")
        if len(official) != len(ours):
            print(f"  official has {len(official)} lines, ours {len(ours)}")
    return ok


def sqa_parity(a, p, work) -> bool:
    ok = True
    evaluate_acc = open(os.path.join(a.scienceqa, "tools", "evaluate_acc.py"), encoding="utf-8").read()
    evaluate_acc = evaluate_acc.replace("assert num == 4241", "pass")  # the fixture has 8 test problems
    for name, texts in ts.SETS.items():
        answers = ts._answers(p, texts)
        path = os.path.join(work, f"sqa_{name}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in answers.values()))
        res = os.path.join(work, f"sqa_{name}_result.json")
        off = run(a.python, [os.path.join(a.llava, "llava", "eval", "eval_science_qa.py"), "--base-dir", p["sqa_dir"],
                             "--result-file", path, "--output-file", os.path.join(work, "out.json"),
                             "--output-result", res], work).strip().split("\n")
        code = (f"ns = {{}}; exec(compile({evaluate_acc!r}, 'evaluate_acc.py', 'exec'), ns); "
                f"ns['print_scores'](ns['get_scores']({res!r}, {os.path.join(p['sqa_dir'], 'problems.json')!r}))")
        off += run(a.python, ["-c", code], work).strip().split("\n")[:-1]  # its last line is a LaTeX row
        s = sqa.sqa_scores(sqa.read_problems(p["sqa_dir"]), answers)
        ours = [sqa.llava_line(s["metrics"])] + sqa.scienceqa_lines(s["metrics"])
        ok &= compare(f"ScienceQA set {name}", off, ours, ts.OFFICIAL[name])
    return ok


def mme_parity(a, p, work) -> bool:
    w = os.path.join(work, "mme")
    shutil.copytree(os.path.dirname(p["mme_root"]), w)
    os.makedirs(os.path.join(w, "answers"))
    shutil.copy(a.mme_convert, w)
    shutil.copytree(a.mme_tool, os.path.join(w, "eval_tool"))
    answers = tm._answers(p, tm.HAND)
    with open(os.path.join(w, "answers", "hand.jsonl"), "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in answers))
    run(a.python, ["convert_answer_to_mme.py", "--experiment", "hand"], w)
    driver = ("import os, sys; sys.path.insert(0, 'eval_tool'); sys.argv = ['calculation.py']; import calculation as C\n"
              "d = 'eval_tool/answers/hand'; have = {f[:-4] for f in os.listdir(d)}\n"
              "C.eval_type_dict = {k: [t for t in v if t in have] for k, v in C.eval_type_dict.items()}\n"
              "C.eval_type_dict = {k: v for k, v in C.eval_type_dict.items() if v}\n"
              "C.calculate_metrics().process_result(d)\n")
    off = run(a.python, ["-W", "ignore", "-c", driver], w).split("\n")[:-1]
    m = mme.mme_scores([(r["question_id"], r["prompt"], r["text"]) for r in answers],
                       mme.read_ground_truth(p["mme_root"]))
    return compare("MME hand-built set", off, mme.official_lines(m), None)


OBJHAL_DRIVER = r"""
import json, os, sys, types
sys.path.insert(0, {root!r})
from evals import objhal as O
V = O.ObjHalVocab({synonyms!r})
REPLIES = {replies!r}
class Tok:
    def __init__(self, lemma, tag): self.lemma_, self.tag_ = lemma, tag
def nlp(text):
    toks = O.tokenize(text, split_hyphens=True)
    return [Tok(V.lemma(t), "NN" if O.is_noun(toks, i) else "DT") for i, t in enumerate(toks)]
spacy = types.ModuleType("spacy"); spacy.load = lambda name: nlp; sys.modules["spacy"] = spacy
nltk = types.ModuleType("nltk"); nltk.word_tokenize = lambda s: O.tokenize(s)
class WNL:
    def lemmatize(self, w): return V.lemma(w)
nltk.wordnet = types.SimpleNamespace(WordNetLemmatizer=WNL)
sys.modules["nltk"] = nltk; sys.modules["nltk.stem"] = types.ModuleType("nltk.stem")
class Chat:
    def __init__(self, **kw): pass
    def chat_completion(self, messages):
        p = messages[0]["content"]
        text = next(r for a, r in REPLIES if "\n" + a + "\n" in p)
        return {{"model": "stub", "usage": {{"total_tokens": 0, "prompt_tokens": 0, "completion_tokens": 0}},
                "choices": [{{"message": {{"content": text}}}}]}}
g = types.ModuleType("gpt4_grpc"); g.Chat = Chat; sys.modules["gpt4_grpc"] = g
import time; time.sleep = lambda s: None
sys.path.insert(0, "eval")
import eval_gpt_obj_halbench as E
ans = sys.argv[1]
_, imids, _ = E.load_generated_captions(ans)
ev = E.CHAIR(imids, {coco!r}, "")
ev.get_annotations()
d = ev.compute_chair(ans, -1, gpt_process=sys.argv[2] == "chat")
E.save_hallucinated_words(ans, d, os.path.dirname(ans), -1)
"""


def objhal_parity(a, p, work) -> bool:
    ok = True
    replies = [(t.replace("Assistant:", "").strip(), r) for t, r in to.HAND if r]
    for mode, quoted in (("chat", to.OFFICIAL_CHAT), ("offline", to.OFFICIAL_OFFLINE)):
        w = os.path.join(work, f"objhal_{mode}")
        os.makedirs(os.path.join(w, "eval", "data"))
        for f in ("eval_gpt_obj_halbench.py", "summarize_gpt_obj_halbench_review.py"):
            shutil.copy(os.path.join(a.rlaifv, "eval", f), os.path.join(w, "eval", f))
        shutil.copy(p["objhal_synonyms"], os.path.join(w, "eval", "data", "synonyms_refine.txt"))
        run_dir = os.path.join(w, "res", "model", "x", "step")  # summarize reads .../<model>/_/<step>/<file>
        os.makedirs(run_dir)
        ans = to.write_answers(p, os.path.join(run_dir, "obj_halbench_answer.jsonl"))
        with open(os.path.join(w, "driver.py"), "w", encoding="utf-8") as f:
            f.write(OBJHAL_DRIVER.format(root=ROOT, synonyms=p["objhal_synonyms"], replies=replies,
                                         coco=p["objhal_coco"]))
        run(a.python, ["driver.py", ans, mode], w)
        off = run(a.python, [os.path.join("eval", "summarize_gpt_obj_halbench_review.py"), "res/"], w)
        off = off.strip().split("\n")[3:]  # after the base dir, a blank line and "===> model"
        answers, _ = objhal.read_answers(ans)
        vocab = objhal.ObjHalVocab(p["objhal_synonyms"])
        gt, _ = objhal.coco_ground_truth(p["objhal_coco"], {r["image_id"] for r in answers}, vocab)
        if mode == "chat":
            objs = {t.replace("Assistant:", "").strip(): objhal.parse_object_list(r) for t, r in to.HAND
                    if r}
            ments = {str(r["question_id"]): vocab.coco_mentions(vocab.refine_objects(
                [] if len(r["caption"].split()) <= objhal.SHORT_WORDS else objs[r["caption"]])) for r in answers}
        else:
            ments = {str(r["question_id"]): vocab.caption_words(r["caption"]) for r in answers}
        ours = objhal.summary_lines(objhal.objhal_scores(answers, ments, gt)["metrics"])
        ok &= compare(f"Object HalBench ({mode})", off, ours, quoted)
    return ok


# ---------------------------------------------------------------------------------------------- AMBER
# Answers for the public-schema fixture (rehearsal/public_bench.make_amber: AMBER's relation.json entries and
# safe_words.txt verbatim), ids 1-6 then its 14 yes/no questions; each caption names the rules it exercises.
AMBER_PUBLIC = [
    "A cat sleeps on a couch next to two dogs.",  # truth object; an association of a hallu object (couch -> sofa)
    "Two cups of coffee and a drink on the desk, a cake and bottles.",  # plurals; associations cover (drink, desk)
    "A woman and a girl hold a flag while a man and people watch.",  # people: both truth's and hallu's association
    "A man holds a camera on the ground near a building, under trees and leaves.",  # camera: a safe word that is a
    #    truth object (never covered); leaves -> leaf, not AMBER's "leave"
    "A motorcycle with a mirror and a light by a wall; a car and a person.",  # mirror: association of both lists
    "A clock on the wall of a building.",  # a hallu object and its association hit the same object
    "Yes", "No", "yes", "No", "No.", "Yes", " No", "No", "No", "", "Yes", "Yes", "Yes, there is.", "Yes"]
# Answers for the checkout's own data/ (all 15,220 annotations, the 418-word vocabulary): ids 1-11 and yes/no ids of
# each dimension (state, number, action, existence, relation, and the bare "relation" type).
AMBER_REAL = {
    1: "A person walks on a road by a lake, with mountains, trees and clouds in the sky.",
    2: "Two ships sail under a bridge near men and a building.",  # ship twice in the truth; men stays "men"
    3: "Children play on the grass among flowers next to a bench.",  # WordNet's irregular plural
    4: "A woman with a watch holds a paddle; they watch the sun over the lake.",  # watch: noun, then verb
    5: "Kids with toys on the beach by the sea; seagulls fly in the sky.",  # "seegull" is the vocabulary's spelling
    6: "A person on a bicycle in a hat passes a sign, cows and sheep by the road, and a car.",  # sign: safe + truth
    7: "",
    8: "Geese and ducks near a child in a hat; a woman's dog.",  # goose; a possessive
    9: "Man kicks a football on the court toward a goal.",  # a capitalised vocabulary word is no match
    10: "A man in a hat and a tie throws a ball. Sunglasses, too.",
    11: "A dog on the beach.",
    1005: "Yes", 1006: "No", 1007: "No", 1008: "no", 1013: "Yes", 1014: "No", 1017: "Yes", 1018: "Yes",
    13557: "Yes", 13559: "No", 13558: "No",
    8633: "No", 8634: "No.", 8635: "Yes", 8636: "No"}  # existence F1 66.6 with its 1e-3 (66.7 with the others' 1e-4)
# Scored one at a time as answers to tests/test_eval_amber.py's item 1 (truth sky, grass, person; hallu dog, car):
# test_builtin_matcher_rules' sentences and the tokenizer's edge cases. Each one's nouns are compared too.
AMBER_MATCHER = ["Two dogs, a woman's car and three cars.", "Dog and Car.", "Two men and the people.",
                 "Sunglasses? sunglasses.", "You can see a can.", "They watch a hot dog and a watch.",
                 "A dog\u2019s car.", "A dog.The car.", "Mr. Dog saw a car... and a dog!", "(dogs) \"cars\" grass-land",
                 "dog-car, sky/grass; person:dog"]
AMBER_DRIVER = r"""
import contextlib, io, json, runpy, sys
sys.path.insert(0, {root!r})
from evals import amber_words as W  # the built-in tagging rule (it imports only re)
import nltk.tag, nltk.tokenize, spacy
from nltk.tokenize.punkt import PunktSentenceTokenizer
USE, VOCAB = [True], set()
def allowed():
    if not USE[0]:
        raise RuntimeError("a substitute was used on an answer set that must need none")
# 1. punkt's trained English parameters (punkt_tab) -> NLTK's own Punkt algorithm, untrained
def punkt(language="english"):
    allowed()
    return PunktSentenceTokenizer()
nltk.tokenize._get_punkt_tokenizer = punkt
# 2. the averaged-perceptron tagger's model -> NN for every word token but those evals/amber_words.is_noun rules out
class RuleTagger:
    def tag(self, tokens):
        allowed()
        at = [i for i, t in enumerate(tokens) if W.tokenize(t) == [t]]  # word tokens: not "'s", not punctuation
        words = [tokens[i] for i in at]
        nn = {{i for k, i in enumerate(at) if W.is_noun(words, k, VOCAB)}}
        return [(t, "NN" if i in nn else "XX") for i, t in enumerate(tokens)]
nltk.tag._get_tagger = lambda lang=None: RuleTagger()
# 3. en_core_web_lg's vectors -> a blank English pipeline: spaCy's Doc.similarity is then 1.0 for the same word, else 0
blank = spacy.blank("en")
def nlp(text):
    allowed()
    return blank(text)
spacy.load = lambda name, *a, **k: nlp
out, (jobs, result) = [], sys.argv[1:3]
for job in json.load(open(jobs)):
    USE[0] = job["substitute"]
    rel = json.load(open(job["data"] + "/relation.json"))
    VOCAB.clear()
    VOCAB.update(set(rel) | {{w for ws in rel.values() for w in ws}})
    sys.argv = ["inference.py", "--inference_data", job["responses"], "--evaluation_type", job["type"],
                "--annotation", job["data"] + "/annotations.json", "--word_association", job["data"] + "/relation.json",
                "--safe_words", job["data"] + "/safe_words.txt", "--metrics", {metrics!r}]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        g = runpy.run_path({inference!r}, run_name="__main__")
    USE[0] = True
    nouns = [[n for n in g["extract_nouns"](t) if n in VOCAB] for t in job["captions"]]
    out.append({{"printed": buf.getvalue(), "nouns": nouns}})
json.dump(out, open(result, "w"))
"""


def amber_type(types: set[str]) -> str:
    """inference.py's --evaluation_type for the annotation types answered (a: all four dimensions)."""
    dims = {"g": "generative" in types, "de": "discriminative-hallucination" in types,
            "da": any("attribute" in t for t in types),
            "dr": any(t != "generative" and "attribute" not in t and "hallucination" not in t for t in types)}
    on = [k for k, v in dims.items() if v]
    return "a" if len(on) == 4 else "d" if on == ["de", "da", "dr"] else on[0]


def amber_ours(name: str, data: str, queries: list[dict], answers: dict[int, str], work: str) -> tuple[list, str]:
    """`eval.py amber --matcher builtin` on the answers: the lines it prints as inference.py does (between its
    heading and the lines marked ours), and the AMBER response file it writes for the official script."""
    w = os.path.join(work, "amber_run_" + name)
    os.makedirs(w)
    q = [r for r in queries if r["id"] in answers]
    with open(os.path.join(w, "query.json"), "w", encoding="utf-8") as f:
        json.dump(q, f)
    with open(os.path.join(w, "answers.jsonl"), "w", encoding="utf-8") as f:
        f.write("".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in answers.items()))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.main(["amber", "--answers", os.path.join(w, "answers.jsonl"), "--questions", os.path.join(w, "query.json"),
                 "--data", data, "--matcher", "builtin", "--out", os.path.join(w, "amber.json")])
    lines = buf.getvalue().split("\n")
    end = next(i for i, line in enumerate(lines) if line.startswith(("ours: ", "-> ")))
    return lines[1:end], os.path.join(w, "amber_responses.json")


def amber_parity(a, p, work) -> bool:
    """AMBER's inference.py, run unchanged on each answer set, against `eval.py amber` on the same answers."""
    root = os.path.join(work, "amber_test_data")  # tests/test_eval_amber.py's data folder and answers
    os.makedirs(root)
    hand_data, hand_q = ta.make_data(pathlib.Path(root))
    hand = ta.all_answers()
    with open(os.path.join(p["amber_questions"]), encoding="utf-8") as f:
        pub_q = json.load(f)
    pub = {r["id"]: t for r, t in zip(pub_q, AMBER_PUBLIC, strict=True)}
    real_data = os.path.join(a.amber, "data")
    with open(os.path.join(real_data, "query", "query_all.json"), encoding="utf-8") as f:
        real_q = [r for r in json.load(f) if r["id"] in AMBER_REAL]
    sets = [("hand", str(hand_data), hand_q, hand), ("public", p["amber_data"], pub_q, pub),
            ("real", real_data, real_q, AMBER_REAL)]
    ann = {}
    for _, data, _, _ in sets:
        with open(os.path.join(data, "annotations.json"), encoding="utf-8") as f:
            ann[data] = json.load(f)
    sets += [(f"{n} yes/no", d, q, {i: t for i, t in ans.items() if ann[d][i - 1]["type"] != "generative"})
             for n, d, q, ans in sets]  # the discriminative answers alone: no substitute may be touched
    sets += [(f"matcher {i}", str(hand_data), hand_q, {1: t}) for i, t in enumerate(AMBER_MATCHER, 1)]
    jobs, ours = [], []
    for name, data, queries, answers in sets:
        types = {ann[data][i - 1]["type"] for i in answers}
        lines, responses = amber_ours(name.replace(" ", "_"), data, queries, answers, work)
        captions = [t for i, t in answers.items() if ann[data][i - 1]["type"] == "generative"]
        jobs.append({"data": data, "responses": responses, "type": amber_type(types), "captions": captions,
                     "substitute": "generative" in types})
        ours.append((lines, captions, amber_words.noun_finder(amber.AmberData(data).vocabulary)))
    with open(os.path.join(work, "amber_jobs.json"), "w", encoding="utf-8") as f:
        json.dump(jobs, f)
    with open(os.path.join(work, "amber_driver.py"), "w", encoding="utf-8") as f:
        f.write(AMBER_DRIVER.format(root=ROOT, metrics=os.path.join(real_data, "metrics.txt"),
                                    inference=os.path.join(a.amber, "inference.py")))
    run(a.python, ["amber_driver.py", "amber_jobs.json", "amber_official.json"], work,
        {"NLTK_DATA": a.nltk_data} if a.nltk_data else None)
    with open(os.path.join(work, "amber_official.json"), encoding="utf-8") as f:
        official = json.load(f)
    ok, same, n_captions = True, True, 0
    for (name, *_), job, (lines, captions, nouns), off in zip(sets, jobs, ours, official):
        label = f"AMBER {name} (--evaluation_type {job['type']}, {'with' if job['substitute'] else 'no'} substitutes)"
        ok &= compare(label, off["printed"].split("\n")[:-1], lines, None)
        for text, theirs in zip(captions, off["nouns"]):
            n_captions += 1
            if theirs != nouns(text):
                same = False
                print(f"  nouns of {text!r}: official {theirs}, ours {nouns(text)}")
    print(f"AMBER nouns of {n_captions} descriptions (extract_nouns, in the vocabulary): "
          f"{'identical' if same else 'DIFFERENT'}")
    return ok and same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--llava")
    ap.add_argument("--scienceqa")
    ap.add_argument("--mme-convert")
    ap.add_argument("--mme-tool")
    ap.add_argument("--rlaifv")
    ap.add_argument("--amber")
    ap.add_argument("--nltk-data")
    a = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as work:
        p = make_public_bench(os.path.join(work, "bench"))
        if a.llava and a.scienceqa:
            ok &= sqa_parity(a, p, work)
        if a.mme_convert and a.mme_tool:
            ok &= mme_parity(a, p, work)
        if a.rlaifv:
            ok &= objhal_parity(a, p, work)
        if a.amber:
            ok &= amber_parity(a, p, work)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
