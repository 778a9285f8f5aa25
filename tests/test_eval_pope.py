"""POPE: both answer parsers on tricky answers, metrics on a worked example, id matching errors, split construction
(balanced, popular = most frequent, adversarial negatives really co-occur), the pope-build / pope CLI round trip,
and scoring the official files: POPE's coco_pope_<split>.json (labels in the lines) and LLaVA's llava_pope_test.jsonl
(labels from POPE's files by position, each pair checked), per split, with the mean F1 of the three splits."""
import json
import os
import random
import shutil
from collections import Counter

import pytest

import eval as ev
from evals.pope import build_pope_questions, parse_yes_no, parse_yes_no_official, pope_metrics, question_text
from evals.report import write_report
from rehearsal.public_data import make_public_data


@pytest.mark.parametrize("text,yes", [
    ("No, there is not.", False), ("There isn't one.", False), ("Not really.", False),
    ("Yes, a small one.", True), ("Yes. However, there is no dog.", True), ("NO", False), ("no", False),
    ("There is a dog in the image.", True), ("There isn\u2019t a dog.", False), ("Nope!", False),
    ("I don't see one", False), ("There is none.", False), ("Yes", True), ("", False), ("  \n", False),
    ("There is an elephant; it is not small.", False), ("The image does not contain a cup", False)])
def test_parse_yes_no(text, yes):
    assert parse_yes_no(text) is yes


def test_metrics_worked_example():
    # labels: q1..q5 yes, q6..q10 no; predictions: q1-q3 yes (TP 3), q4-q5 no (FN 2), q6 yes (FP 1), q7-q10 no (TN 4)
    labels = {f"q{i}": ("yes" if i <= 5 else "no") for i in range(1, 11)}
    texts = {1: "Yes", 2: "Yes, there is.", 3: "yes.", 4: "No.", 5: "There isn't.", 6: "Yes, a small one.",
             7: "No", 8: "Not really.", 9: "No, there is not.", 10: ""}
    preds = [(f"q{i}", texts[i]) for i in (10, 3, 7, 1, 9, 2, 8, 4, 6, 5)]  # shuffled: matched by id, not order
    m = pope_metrics(preds, labels)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 2, 1, 4)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert m["yes_ratio"] == pytest.approx(0.4)
    assert m["n_empty"] == 1 and m["n"] == 10
    # bools work too; a degenerate all-no model has precision 0 rather than a crash
    assert pope_metrics({"a": False, "b": False}, {"a": "yes", "b": "no"})["precision"] == 0.0


def test_metrics_id_errors():
    labels = {"1": "yes", "2": "no"}
    with pytest.raises(ValueError, match="1 question\\(s\\) without an answer .*'2'"):
        pope_metrics([("1", "yes")], labels)
    with pytest.raises(ValueError, match="question id '1' appears twice"):
        pope_metrics([("1", "yes"), ("1", "no"), ("2", "no")], labels)
    with pytest.raises(ValueError, match="1 answer\\(s\\) to unknown questions .*'3'"):
        pope_metrics([("1", "yes"), ("2", "no"), ("3", "no")], labels)
    with pytest.raises(ValueError, match="label of question '1' is 'maybe'"):
        pope_metrics([("1", "yes")], {"1": "maybe"})


# scene types with strong co-occurrence, like the toy world's
ANN = {
    "k1": ["oven", "sink", "cup", "knife"], "k2": ["oven", "sink", "cup"], "k3": ["sink", "knife", "cup", "bowl"],
    "b1": ["umbrella", "surfboard", "person"], "b2": ["umbrella", "person", "kite"], "b3": ["surfboard", "person",
                                                                                           "kite", "dog"],
    "s1": ["car", "person", "traffic light"], "s2": ["car", "bus", "traffic light", "person"],
    "x1": ["dog"],  # too few objects: skipped
}


def _cooc():
    c = Counter()
    for objs in ANN.values():
        for a in objs:
            for b in objs:
                if a != b:
                    c[a, b] += 1
    return c


@pytest.mark.parametrize("split", ["random", "popular", "adversarial"])
def test_split_construction(split):
    qs, stats = build_pope_questions(ANN, split, num_per_image=2, seed=3)
    assert stats["skipped_too_few_objects"] == 1 and stats["images"] == 8 and len(qs) == 32
    assert Counter(q["label"] for q in qs) == {"yes": 16, "no": 16}  # balanced
    freq = Counter(o for objs in ANN.values() for o in set(objs))
    cooc = _cooc()
    for img in {q["image_id"] for q in qs}:
        mine = [q for q in qs if q["image_id"] == img]
        pos = [q["object"] for q in mine if q["label"] == "yes"]
        neg = [q["object"] for q in mine if q["label"] == "no"]
        assert len(pos) == len(neg) == 2 and len(set(neg)) == 2
        assert set(pos) <= set(ANN[img]) and not set(neg) & set(ANN[img])
        absent = [o for o in freq if o not in ANN[img]]
        others = [o for o in absent if o not in neg]
        if split == "popular":  # the most frequent absent objects
            assert min(freq[o] for o in neg) >= max(freq[o] for o in others)
        if split == "adversarial":  # negatives co-occur with the image's objects at least as much as any other
            score = {o: sum(cooc[p, o] for p in ANN[img]) for o in absent}
            assert min(score[o] for o in neg) >= max(score[o] for o in others)
            assert sum(score[o] > 0 for o in neg) == min(2, sum(score[o] > 0 for o in absent))
            assert score[neg[0]] > 0
    for q in qs:
        assert q["prompt"] == q["question"] == question_text(q["object"])
        assert q["split"] == split
    assert qs[0]["question_id"] == 1 and len({q["question_id"] for q in qs}) == len(qs)
    assert build_pope_questions(ANN, split, 2, seed=3)[0] == qs  # reproducible
    assert any(q["prompt"] == "Is there an umbrella in the image?" for q in qs) or split == "random"


def test_adversarial_differs_from_random_on_kitchens():
    qs, _ = build_pope_questions(ANN, "adversarial", num_per_image=2, seed=0)
    negs = {q["object"] for q in qs if q["label"] == "no" and q["image_id"] == "k2"}
    assert negs == {"knife", "bowl"}  # a kitchen's adversarial negatives are kitchen objects
    # k1 and k3 have only one absent kitchen object each (bowl, oven): one fallback negative each
    assert build_pope_questions(ANN, "adversarial", 2, seed=0)[1]["adversarial_without_cooccurrence"] == 2


def test_cli_build_and_score(tmp_path, capsys):
    ann = {k: {"objects": v, "image": f"img/{k}.png"} for k, v in ANN.items()}
    (tmp_path / "gt.json").write_text(json.dumps(ann))
    qpath = tmp_path / "q" / "pope_adv.jsonl"
    ev.main(["pope-build", "--annotations", str(tmp_path / "gt.json"), "--split", "adversarial",
             "--num-per-image", "2", "--seed", "1", "--output", str(qpath),
             "--suffix", "\nAnswer the question using a single word or phrase."])
    qs = [json.loads(line) for line in open(qpath)]
    assert qs[0]["image"] == f"../img/{qs[0]['image_id']}.png"  # rebased onto the question file's dir
    assert qs[0]["prompt"].endswith("\nAnswer the question using a single word or phrase.")
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "answers.jsonl", "w") as f:  # a model that always says yes
        for q in reversed(qs):
            f.write(json.dumps({"question_id": q["question_id"], "text": "Yes, there is."}) + "\n")
    ev.main(["pope", "--answers", str(run / "answers.jsonl"), "--questions", str(qpath)])
    m = json.loads((run / "pope_adversarial.json").read_text())
    assert m["kind"] == "pope" and m["split"] == "adversarial"
    assert m["metrics"]["accuracy"] == 0.5 and m["metrics"]["yes_ratio"] == 1.0 and m["metrics"]["recall"] == 1.0
    assert m["parser"].startswith("povid")  # our own question files: our parser
    assert "POPE adversarial (povid parser): acc 50.0" in capsys.readouterr().out
    with open(run / "answers.jsonl", "a") as f:
        f.write(json.dumps({"question_id": qs[0]["question_id"], "text": "No"}) + "\n")
    with pytest.raises(ValueError, match="appears twice"):
        ev.main(["pope", "--answers", str(run / "answers.jsonl"), "--questions", str(qpath)])


@pytest.mark.parametrize("text,yes", [
    ("No, there is not.", False), ("no", False), ("Yes, there is no dog.", False),  # any "no" token before a "."
    ("Yes. There is no dog.", True), ("Not really.", True), ("NO", True), ("There isn't one.", True),
    ("", True), ("No\nthere is one", True), ("There is not a dog", False), ("Yes", True)])
def test_parse_yes_no_official(text, yes):
    """The official rule, bug for bug (RUCAIBox/POPE evaluate.py = LLaVA eval_pope.py)."""
    assert parse_yes_no_official(text) is yes


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    return make_public_data(tmp_path_factory.mktemp("public"), image_size=32)


def _answers(path, lines, texts):
    """Answer lines in LLaVA's answer layout, shuffled (scoring matches by question_id, never by position)."""
    recs = [{"question_id": q["question_id"], "prompt": q["text"], "text": t} for q, t in zip(lines, texts)]
    random.Random(0).shuffle(recs)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


def _lines(path):
    return [json.loads(x) for x in open(path)]


# per split, the model's answers to the 6 fixture questions (yes, no, yes, no, yes, no)
TEXTS = {"random": ["Yes", "No", "Yes", "Not really.", "Yes", "No"],
         "popular": ["Yes", "Yes", "Yes", "No", "No", "No"],
         "adversarial": ["Yes", "Yes", "", "No", "Yes", "Yes"]}


def test_official_files_per_split(pub, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for split in ("random", "popular", "adversarial"):
        ans = _answers(run / f"pope_{split}_answers.jsonl", _lines(pub[f"pope_{split}"]), TEXTS[split])
        ev.main(["pope", "--answers", ans, "--questions", pub[f"pope_{split}"]])  # split from the file name
    out = capsys.readouterr().out
    res = {s: json.loads((run / f"pope_{s}.json").read_text()) for s in ("random", "popular", "adversarial")}
    assert all(r["parser"].startswith("official") and r["split"] == s for s, r in res.items())
    m = {s: r["metrics"] for s, r in res.items()}
    # random: "Not really." is yes for the official rule -> TP 3, FP 1, TN 2
    assert (m["random"]["tp"], m["random"]["fp"], m["random"]["tn"], m["random"]["fn"]) == (3, 1, 2, 0)
    assert (m["popular"]["tp"], m["popular"]["fp"], m["popular"]["fn"]) == (2, 1, 1)
    assert m["adversarial"]["n_empty"] == 1 and m["adversarial"]["tp"] == 3  # the empty answer counts as yes
    assert "POPE random (official parser): acc 83.3" in out
    # our parser on the same answers (asked for) reads "Not really." and the empty answer as no
    ev.main(["pope", "--answers", str(run / "pope_random_answers.jsonl"), "--questions", pub["pope_random"],
             "--parser", "povid", "--out", str(run / "povid" / "pope_{split}.json")])
    pm = json.loads((run / "povid" / "pope_random.json").read_text())
    assert pm["parser"].startswith("povid") and pm["metrics"]["fp"] == 0 and pm["metrics"]["accuracy"] == 1.0
    # report: LLaVA's POPE number, the mean F1 of the three splits, and which parser
    md = open(write_report([str(run)], str(tmp_path))).read()
    f1 = [m[s]["f1"] for s in ("random", "popular", "adversarial")]
    assert f"| {100 * sum(f1) / 3:.1f} |" in md and "POPE F1 mean" in md
    assert "run: POPE answers read with the official: RUCAIBox/POPE evaluate.py" in md
    # an answer to a question the file does not hold, and a missing answer, are errors
    with open(run / "pope_random_answers.jsonl", "a") as f:
        f.write(json.dumps({"question_id": 77, "text": "Yes"}) + "\n")
    with pytest.raises(ValueError, match="pope_random_answers.jsonl: answer 7: question_id 77 is not in"):
        ev.main(["pope", "--answers", str(run / "pope_random_answers.jsonl"), "--questions", pub["pope_random"]])
    lines = open(run / "pope_popular_answers.jsonl").read().splitlines()
    (run / "short.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="1 question\\(s\\) without an answer"):
        ev.main(["pope", "--answers", str(run / "short.jsonl"), "--questions", pub["pope_popular"]])


def test_llava_question_file(pub, tmp_path, capsys):
    """LLaVA's llava_pope_test.jsonl: one answers file, three splits; labels from POPE's coco/ folder; the same
    numbers as scoring POPE's own files with the same answers."""
    llava = _lines(pub["llava_pope_test"])
    texts = [t for s in ("adversarial", "popular", "random") for t in TEXTS[s]]  # the file's order
    ans = _answers(tmp_path / "answers.jsonl", llava, texts)
    ev.main(["pope", "--answers", ans, "--questions", pub["llava_pope_test"], "--label-dir", pub["pope_dir"]])
    out = capsys.readouterr().out
    assert "POPE F1 mean of the 3 splits (LLaVA's POPE number):" in out
    for split in ("random", "popular", "adversarial"):
        got = json.loads((tmp_path / f"pope_{split}.json").read_text())
        assert got["split"] == split and got["parser"].startswith("official")
        own = _answers(tmp_path / f"own_{split}.jsonl", _lines(pub[f"pope_{split}"]), TEXTS[split])
        ev.main(["pope", "--answers", own, "--questions", pub[f"pope_{split}"], "--out", str(tmp_path / "o.json")])
        assert got["metrics"] == json.loads((tmp_path / "o.json").read_text())["metrics"]
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "image": "x.jpg", "text": "Is there a cat?"}) +
                                      "\n")
    with pytest.raises(ValueError, match="q.jsonl:1: no 'label' .* and no 'category'"):
        ev.main(["pope", "--answers", ans, "--questions", str(tmp_path / "q.jsonl")])
    with pytest.raises(ValueError, match="need --label-dir"):
        ev.main(["pope", "--answers", ans, "--questions", pub["llava_pope_test"]])
    with pytest.raises(ValueError, match="3 splits: --out needs a '\\{split\\}'"):
        ev.main(["pope", "--answers", ans, "--questions", pub["llava_pope_test"], "--label-dir", pub["pope_dir"],
                 "--out", str(tmp_path / "x.json")])
    # label files of another POPE version: a shifted line, or a different length, is an error naming both files
    bad = tmp_path / "coco"
    shutil.copytree(pub["pope_dir"], bad)
    lab = _lines(bad / "coco_pope_popular.json")
    lab[1], lab[2] = lab[2], lab[1]
    (bad / "coco_pope_popular.json").write_text("".join(json.dumps(x) + "\n" for x in lab))
    with pytest.raises(ValueError, match="llava_pope_test.jsonl:8 and .*coco_pope_popular.json:2 do not describe "
                                         "the same question"):
        ev.main(["pope", "--answers", ans, "--questions", pub["llava_pope_test"], "--label-dir", str(bad)])
    (bad / "coco_pope_popular.json").write_text("".join(json.dumps(x) + "\n" for x in lab[:5]))
    with pytest.raises(ValueError, match="category 'popular' has 6 questions but .*coco_pope_popular.json has 5"):
        ev.main(["pope", "--answers", ans, "--questions", pub["llava_pope_test"], "--label-dir", str(bad)])
    (bad / "coco_pope_popular.json").write_text("".join(json.dumps({k: v for k, v in x.items() if k != "label"} if
                                                                   i == 3 else x) + "\n" for i, x in enumerate(lab)))
    with pytest.raises(ValueError, match="coco_pope_popular.json:4: missing field 'label'"):
        ev.main(["pope", "--answers", ans, "--questions", pub["llava_pope_test"], "--label-dir", str(bad)])
    os.remove(bad / "coco_pope_popular.json")
    with pytest.raises(FileNotFoundError, match="category 'popular' has no label file"):
        ev.main(["pope", "--answers", ans, "--questions", pub["llava_pope_test"], "--label-dir", str(bad)])
