"""Parity of evals/sqa.py, evals/mme.py and evals/objhal.py with the official scoring scripts: each official script,
from your own checkout and unchanged, scores the hand-built answer sets of tests/test_eval_{sqa,mme,objhal}.py on the
public-schema tree of rehearsal/public_bench.py, and its printout is compared line by line with ours and with the
printout the tests quote. Nothing official is copied into this repository; the scripts run in a subprocess.

    python bench/eval_parity.py --python /path/to/venv/bin/python \\
        --llava LLaVA --scienceqa ScienceQA --mme-convert eval/MME/convert_answer_to_mme.py \\
        --mme-tool eval_tool --rlaifv RLAIF-V

  --llava        haotian-liu/LLaVA checkout (llava/eval/eval_science_qa.py)
  --scienceqa    lupantech/ScienceQA checkout (tools/evaluate_acc.py; its assert on 4241 problems is skipped)
  --mme-convert  convert_answer_to_mme.py from LLaVA's eval.zip (playground/data/eval/MME/)
  --mme-tool     MME's eval_tool/ (calculation.py; run on the subtasks present, as it has no option for a subset)
  --rlaifv       RLHF-V/RLAIF-V checkout (eval/eval_gpt_obj_halbench.py, eval/summarize_gpt_obj_halbench_review.py)
  --python       an interpreter with scikit-learn, pandas, jsonlines, tqdm and requests (the official scripts' needs)

Object HalBench's script imports spaCy (en_core_web_trf), NLTK's WordNet and OpenAI's client, none of which can be
installed here: the run replaces spacy.load, nltk.word_tokenize, WordNetLemmatizer and the chat call with our
lemmatiser (evals/objhal.py tokenize / ObjHalVocab.lemma / is_noun) and the tests' canned replies. The comparison
therefore checks everything but the lemmatiser (double words, noun runs, dedup, the toilet-seat rule, the sums and
the printout); the lemmatiser's own differences are the LEMMA_CASES of tests/test_eval_objhal.py.
Exit status 0 when every printout matches.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from evals import mme, objhal, sqa  # noqa: E402
from rehearsal.public_bench import make_public_bench  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--llava")
    ap.add_argument("--scienceqa")
    ap.add_argument("--mme-convert")
    ap.add_argument("--mme-tool")
    ap.add_argument("--rlaifv")
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
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
