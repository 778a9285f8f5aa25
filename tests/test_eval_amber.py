"""AMBER scored as its inference.py (junyangwang0410/AMBER @534babf) does, on a hand-built data folder in the
published schema: every expected number below was counted by hand from the official rules and rounded as the script
prints it (round(100 * x, 1), every denominator starting at 0.001, F1 from the rounded P and R). The similarity step
is equality here (the built-in matcher), so the cases use words no spaCy model puts above 0.8 from each other
(sky, grass, person, dog, car, pizza, lamp): the official path would count them the same. AMBER's inference.py,
run unchanged by bench/eval_parity.py on these answers, prints the same lines (docs/eval_parity.md).
Also: the built-in noun matcher's rules, AMBER's query files for generate, the response file, and bad input."""
import json

import pytest

import eval as ev
from evals import amber, amber_words
from evals.files import SHORT_ANSWER_SUFFIX

RELATION = {"sky": [], "grass": ["ground"], "ground": ["floor"], "person": ["man", "woman", "people"], "dog": [],
            "car": ["vehicle"], "pizza": [], "lamp": ["light"], "can": [], "watch": [], "hot": [], "sunglasses": []}
SAFE = "light\nsign"  # no trailing newline, like the published safe_words.txt
GEN = [(["sky", "grass", "person"], ["dog", "car"])] * 4 + [(["person", "person"], ["dog"]), (["grass", "ground"],
                                                                                              ["car"])]
DISC = [("discriminative-hallucination", "no")] * 3 + [
    ("discriminative-attribute-state", "yes"), ("discriminative-attribute-state", "no"),
    ("discriminative-attribute-number", "yes"), ("discriminative-attribute-number", "no"),
    ("discriminative-attribute-action", "yes"), ("discriminative-attribute-action", "no"),
    ("discriminative-relation", "yes"), ("relation", "no")]
CAPTIONS = {
    1: "A man walks on the grass under the sky. Dogs run.",  # association (man -> person), plain words; "Dogs":
    #    case-sensitive, not "dog"                    -> 3 nouns, none hallucinated, 3/3 covered
    2: "There is a dog and two cars on the ground.",  # hallu objects (and a plural) are hit AND hallucinated;
    #    an association of a truth object covers it  -> 3 nouns, 2 hallucinated, 1/3 covered, 2/2 hit
    3: "",                                             # empty answer: no noun, no hallucination, nothing covered
    4: "A light and a pizza.",                         # safe word: never hallucinated, still a mention; pizza is
    #                                                     in no list -> hallucinated (2 nouns, 1 hallucinated)
    5: "A man.",                                       # a repeated truth object counts twice, one is covered: 1/2
    6: "The ground.",                                  # "ground" is grass's association AND a truth object: the
    #                                                     association comes first, so grass is covered, not ground
}
ANSWERS_D = ["No", "Yes", "no",  # existence (all truth no): correct, wrong, not exactly "No" (wrong, unparsed)
             "Yes", "No.",        # state: correct; "No." is not "No" (wrong, unparsed)
             "No", "No",          # number: wrong "No" (lowers precision), correct
             "Yes", "Yes",        # action: correct, wrong
             "Yes", "No"]         # relation: both correct


def make_data(root):
    d = root / "data"
    (d / "query").mkdir(parents=True)
    ann = [{"id": i + 1, "type": "generative", "truth": t, "hallu": h} for i, (t, h) in enumerate(GEN)]
    ann += [{"id": len(ann) + i + 1, "type": ty, "truth": tr} for i, (ty, tr) in enumerate(DISC)]
    (d / "annotations.json").write_text(json.dumps(ann, indent=4))
    (d / "relation.json").write_text(json.dumps(RELATION))
    (d / "safe_words.txt").write_text(SAFE)
    queries = [{"id": a["id"], "image": f"AMBER_{min(a['id'], 6)}.jpg",
                "query": "Describe this image." if a["type"] == "generative" else "Is there a dog in this image?"}
               for a in ann]
    (d / "query" / "query_all.json").write_text(json.dumps(queries, indent=4))
    return d, queries


def write_answers(path, texts, gen=None):
    with open(path, "w") as f:
        for qid, text in texts.items():
            f.write(json.dumps({"question_id": qid, "text": text, "model": "ckpt",
                                "gen": gen or {"temperature": 0.0, "suffix": ""}}) + "\n")


def all_answers():
    return {**CAPTIONS, **{7 + i: t for i, t in enumerate(ANSWERS_D)}}


def test_official_rules_by_hand(tmp_path, capsys):
    d, _ = make_data(tmp_path)
    write_answers(tmp_path / "a.jsonl", all_answers())
    ev.main(["amber", "--answers", str(tmp_path / "a.jsonl"), "--questions", str(d / "query" / "query_all.json"),
             "--data", str(d), "--matcher", "builtin"])
    out = json.loads((tmp_path / "amber.json").read_text())
    s = out["metrics"]["official_printed"]
    # CHAIR 3 / 10.001; Cover 6 / 16.001; Hal 100 - 4 / 6.001; Cog 2 / 10.001
    assert s["generative"] == {"chair": 30.0, "cover": 37.5, "hal": 33.3, "cog": 20.0, "n_mentions": 10,
                               "n_hallucinated": 3}
    # "No" is the positive class; P = correct No / answered No, R = correct No / truth no; F1 from the rounded P, R
    assert s["existence"] == {"accuracy": 33.3, "precision": 99.9, "recall": 33.3, "f1": 49.9, "n": 3,
                              "n_unparsed": 1}  # F1 with the existence epsilon 1e-3
    assert s["state"] == {"accuracy": 50.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 2, "n_unparsed": 1}
    assert s["number"] == {"accuracy": 50.0, "precision": 50.0, "recall": 99.9, "f1": 66.6, "n": 2, "n_unparsed": 0}
    assert s["action"]["accuracy"] == 50.0 and s["action"]["f1"] == 0.0
    # attribute pools its sub-blocks' counts, each started at 0.001: P = 1 / 2.003, R = 1 / 3.003
    assert s["attribute"] == {"accuracy": 50.0, "precision": 49.9, "recall": 33.3, "f1": 39.9, "n": 6,
                              "n_unparsed": 1}
    # both relation types pool; all correct still prints 99.9 (the 0.001 start of every count)
    assert s["relation"] == {"accuracy": 100.0, "precision": 99.9, "recall": 99.9, "f1": 99.9, "n": 2,
                             "n_unparsed": 0}
    assert s["discriminative"] == {"accuracy": 54.5, "precision": 75.0, "recall": 42.9, "f1": 54.6, "n": 11,
                                   "n_unparsed": 2}
    assert s["amber_score"] == pytest.approx((100 - 30.0 + 54.6) / 2)
    assert out["metrics"]["chair"] == pytest.approx(0.30) and out["metrics"]["existence_f1"] == pytest.approx(0.499)
    assert out["comparable"] is False and out["matcher"].startswith("builtin")
    per = out["per_caption"]
    assert per["2"]["hallucinated"] == ["dog", "car"] and per["6"]["covered"] == 1 and per["1"]["nouns"] == [
        "man", "grass", "sky"]
    # AMBER's own response file, in the query file's order, answers verbatim: its inference.py scores the same
    resp = json.loads((tmp_path / "amber_responses.json").read_text())
    assert resp[:2] == [{"id": 1, "response": CAPTIONS[1]}, {"id": 2, "response": CAPTIONS[2]}]
    assert resp[-1] == {"id": 17, "response": "No"} and len(resp) == 17
    printed = capsys.readouterr().out
    # inference.py's own printout, tabs and trailing spaces as it prints them (bench/eval_parity.py runs it)
    assert "\nGenerative Task:\nCHAIR:\t\t 30.0\nCover:\t\t 37.5\nHal:\t\t 33.3\nCog:\t\t 20.0 \n\n" in printed
    assert "\nAttribute:\nAccuracy:\t 50.0\nPrecision:\t 49.9\nRecall:\t\t 33.3\nF1:\t\t 39.9 \n" in printed
    assert "AMBER score 62.30" in printed


def test_builtin_matcher_rules():
    vocab = set(RELATION) | {w for ws in RELATION.values() for w in ws}
    nouns = amber_words.noun_finder(vocab)
    assert nouns("Two dogs, a woman's car and three cars.") == ["dog", "woman", "car", "car"]  # plurals, possessive
    assert nouns("Dog and Car.") == []                       # case-sensitive, as the official vocabulary match
    assert nouns("Two men and the people.") == ["people"]    # WordNet keeps "men" as "men": not in the vocabulary
    assert nouns("Sunglasses? sunglasses.") == []            # WordNet lemmatises to "sunglass"
    assert nouns("You can see a can.") == ["can"]            # the modal is no noun; after a determiner it is
    assert nouns("They watch a hot dog and a watch.") == ["dog", "watch"]  # verb after a pronoun; "hot" an adjective
    # NLTK's word_tokenize cuts at ; , : and a sentence's final period, not inside "dog.The" or "sky/grass"
    assert nouns("A dog.The car; sky/grass, person:dog.") == ["car", "person", "dog"]
    assert amber_words.lemma("tapes", vocab | {"tap", "tape"}) == "tape"  # WordNet's choice over the -es rule
    assert amber_words.lemma("potatoes", {"potato"}) == "potato" and amber_words.lemma("vases", {"vase"}) is None


def test_questions_for_generate(tmp_path):
    d, queries = make_data(tmp_path)

    img = str(tmp_path / "img")
    qs = amber.question_records(str(d / "query" / "query_all.json"), img)
    assert [q["question_id"] for q in qs] == [q["id"] for q in queries]
    assert qs[0]["prompt"] == "Describe this image." and qs[0]["suffix"] == ""  # generative ids <= 1004: as is
    assert qs[0]["image_file"] == str(tmp_path / "img" / "AMBER_1.jpg")
    assert not amber.is_question_file(str(tmp_path / "data" / "relation.json"))  # not a query file
    big = [{"id": 1005, "image": "AMBER_1.jpg", "query": "Is the sky sunny in this image?"}]
    (tmp_path / "q.json").write_text(json.dumps(big))
    q = amber.question_records(str(tmp_path / "q.json"), img)[0]
    assert q["prompt"] == big[0]["query"] + SHORT_ANSWER_SUFFIX and q["answer_base"]["question"] == big[0]["query"]
    assert amber.question_records(str(tmp_path / "q.json"), img, short_answer_suffix=False)[0]["prompt"] == big[0][
        "query"]


@pytest.mark.parametrize("case,match", [
    ("missing", r"2 of the 17 questions .* have no answer"),
    ("twice", r"question_id 3 appears twice"),
    ("unknown", r"question_id 99 is not in"),
    ("protocol", r"answers from 2 protocols"),
    ("wrong_file", r"not an AMBER query file"),
])
def test_bad_input(tmp_path, case, match):
    d, _ = make_data(tmp_path)
    ans = all_answers()
    questions = str(d / "query" / "query_all.json")
    a = tmp_path / "a.jsonl"
    if case == "missing":
        del ans[2], ans[9]
    if case == "unknown":
        ans[99] = "Yes"
    write_answers(a, ans)
    if case == "twice":
        with open(a, "a") as f:
            f.write(json.dumps({"question_id": 3, "text": "x"}) + "\n")
    if case == "protocol":  # another run's answer appended: other settings
        with open(a, "a") as f:
            f.write(json.dumps({"question_id": 100, "text": "x", "model": "ckpt", "gen": {"temperature": 0.2}}) + "\n")
    if case == "wrong_file":
        questions = str(tmp_path / "pope.jsonl")
        (tmp_path / "pope.jsonl").write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?"}\n')
    with pytest.raises(ValueError, match=match):
        ev.main(["amber", "--answers", str(a), "--questions", questions, "--data", str(d), "--matcher", "builtin"])


def test_official_matcher_named_when_missing(tmp_path):
    d, _ = make_data(tmp_path)
    write_answers(tmp_path / "a.jsonl", all_answers())
    try:
        amber.official_matcher()
    except (ImportError, LookupError, OSError):
        with pytest.raises(SystemExit, match="amber --matcher official: "):
            ev.main(["amber", "--answers", str(tmp_path / "a.jsonl"), "--questions",
                     str(d / "query" / "query_all.json"), "--data", str(d), "--matcher", "official"])
    else:
        pytest.skip("NLTK with its data and spaCy en_core_web_lg are installed here")
