"""MME: calculation.py's yes / no rule on hand-built answers (each case names the rule it checks); the converter's
question matching (LLaVA's suffix off, " Please answer yes or no." on, the double-space form); per-subtask acc / acc+
and the totals equal, float for float, to what MME's eval_tool printed on the same answers (quoted below: LLaVA's
convert_answer_to_mme.py, then MME's calculation.py, run on the public-schema tree of rehearsal/public_bench.py and on
the shared copy of the official files); LLaVA-v1.5-13b's real answers; both question readers; bad input."""
import json
import os

import pytest

import eval as ev
from evals.mme import (SUBTASKS, gt_key, mme_scores, official_lines, parse_yes_no, question_records,
                       read_answers, read_ground_truth)
from rehearsal.public_bench import make_mme

OFFICIAL_DIR = os.path.join(os.path.dirname(__file__), "data", "official")  # verbatim subsets: SOURCES.md


@pytest.mark.parametrize("text,label,rule", [
    ("Yes", "yes", "lowercased, then 'yes' in the first 4 characters"),
    ("NO", "no", "lowercased"),
    ("no", "no", "exact 'no' (read back with its newline: the 4-character test)"),
    ("Yes.", "yes", "'yes' in the first 4 characters"),
    ("No, it is not.", "no", "'no' in the first 4 characters"),
    ("Nope", "no", "'no' in the first 4 characters"),
    ("Not sure", "no", "'not ' holds 'no'"),
    ("know", "no", "'know' holds 'no' (a quirk of the rule)"),
    ("Noyes", "no", "'noye': 'yes' is not within 4 characters, 'no' is"),
    ("yesno", "yes", "'yes' is tested before 'no'"),
    (" yes", "yes", "' yes' still holds 'yes' within 4 characters"),
    ("I think yes", "other", "'yes' past the 4th character"),
    ("There is no bus", "other", "'no' past the 4th character"),
    ("Y", "other", "no 'yes' / 'no' at all"),
    ("", "other", "an empty answer"),
    ("Yes\nbecause", "yes", "a multi-line answer: the same 4-character rule"),
])
def test_parse_yes_no(text, label, rule):
    assert parse_yes_no(text) == label, rule


@pytest.fixture(scope="module")
def mme(tmp_path_factory):
    return make_mme(str(tmp_path_factory.mktemp("bench")))


def test_gt_key_converter_rules(mme):
    gt = read_ground_truth(mme["mme_root"])
    # LLaVA's suffix removed, " Please answer yes or no." appended (convert_answer_to_mme.py)
    assert gt_key("color/000000002001.jpg", "Is there a red car in the image?\nAnswer the question using a single "
                  "word or phrase.", gt) == ("color", "000000002001.txt",
                                             "Is there a red car in the image? Please answer yes or no.")
    # the double-space form, when that is how MME's file has it
    k = gt_key("color/000000002002.jpg", "Is there a white horse in the image?", gt)
    assert k[2] == "Is there a white horse in the image?  Please answer yes or no." and k in gt
    # images/ layout; our "#q2" ids map to the same file; a prompt with MME's own suffix is used as it is
    assert gt_key("existence/images/000000000785.jpg#q2", "Is there a bus in this image? Please answer yes or no.",
                  gt) in gt


# hand-built answers, in llava_mme.jsonl's order (each image: its Yes question, then its No question)
HAND = ["Yes", "no", "Yes.", "Nope",                      # existence: all right
        "NO", "Not sure", "know", "",                     # color: 'NO' wrong, 'Not sure' right, 'know' wrong, other
        " yes", "I think no", "yesno", "No, it is not."]  # code_reasoning: right, other, right, right


def _answers(mme, texts):
    qs = [json.loads(line) for line in open(mme["mme_questions"], encoding="utf-8")]
    return [{"question_id": q["question_id"], "prompt": q["text"], "text": t} for q, t in zip(qs, texts)]


def test_scores_equal_official_printout_on_hand_built_answers(mme):
    m = mme_scores([(a["question_id"], a["prompt"], a["text"]) for a in _answers(mme, HAND)],
                   read_ground_truth(mme["mme_root"]))
    # MME eval_tool/calculation.py printed, on the converter's output of these answers (3 subtasks present):
    assert official_lines(m) == [
        "=========== Perception ===========", "total score: 225.0 ", "",
        "\t existence  score: 200.0", "\t color  score: 25.0", "", "",
        "=========== Cognition ===========", "total score: 125.0 ", "",
        "\t code_reasoning  score: 125.0", "", ""]
    s = m["subtasks"]
    assert [(s[k]["acc"], s[k]["acc_plus"], s[k]["n_other"]) for k in ("existence", "color", "code_reasoning")] == \
        [(1.0, 1.0, 0), (0.25, 0.0, 1), (0.75, 0.5, 1)]
    assert m["other_rate"] == 2 / 12 and m["n_multiline"] == 0
    assert m["perception"] is None and m["perception_subtasks"] == 2 and not m["complete"]


def test_llava_13b_real_answers():
    """LLaVA-v1.5-13b's published answers on the shared copy of MME's color / artwork / code_reasoning files:
    calculation.py prints color 175.0, artwork 99.99999999999999 (8/12 and 2/6 as floats), code_reasoning 75.0."""
    d = OFFICIAL_DIR
    root = os.path.join(d, "MME", "MME_Benchmark_release_version")
    m = mme_scores([(r["question_id"], r["prompt"], r["text"]) for r in read_answers(
        os.path.join(d, "MME", "llava-v1.5-13b_answers.jsonl"))], read_ground_truth(root))
    assert official_lines(m) == [
        "=========== Perception ===========", "total score: 275.0 ", "", "\t color  score: 175.0",
        "\t artwork  score: 99.99999999999999", "", "", "=========== Cognition ===========", "total score: 75.0 ", "",
        "\t code_reasoning  score: 75.0", "", ""]
    ids = [q["question_id"] for q in question_records(os.path.join(d, "MME", "llava_mme.jsonl"))]
    assert len(set(ids)) == 36 and ids[:2] == ["code_reasoning/0020.png#q1", "code_reasoning/0020.png#q2"]


def test_question_readers_agree(mme):
    from_jsonl = question_records(mme["mme_questions"], image_root=mme["mme_root"])
    assert len({q["question_id"] for q in from_jsonl}) == len(from_jsonl) == 12  # unique ids, for resuming
    assert from_jsonl[0]["question_id"] == "existence/images/000000000785.jpg#q1"
    assert all(q["prompt"].endswith("\nAnswer the question using a single word or phrase.") for q in from_jsonl)
    from_dir = question_records(mme["mme_root"])  # the benchmark folder alone gives the same questions and ids
    key = lambda q: (q["question_id"], q["prompt"], q["image_file"])  # noqa: E731
    assert sorted(map(key, from_dir)) == sorted(map(key, from_jsonl))


def test_bad_inputs(mme, tmp_path):
    gt = read_ground_truth(mme["mme_root"])
    ans = [(a["question_id"], a["prompt"], a["text"]) for a in _answers(mme, HAND)]
    with pytest.raises(ValueError, match="answered twice"):
        mme_scores(ans + ans[:1], gt)
    with pytest.raises(ValueError, match="1 of its questions unanswered"):  # calculation.py would pair wrong lines
        mme_scores(ans[1:], gt)
    with pytest.raises(ValueError, match="is not in MME's color/000000002001.txt"):
        mme_scores([("color/000000002001.jpg", "Is there a dog?", "Yes")], gt)
    pope = tmp_path / "pope.jsonl"  # another benchmark's question file
    pope.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"}) + "\n")
    with pytest.raises(ValueError, match="not an MME question line"):
        question_records(str(pope))
    bad = tmp_path / "MME" / "color"
    bad.mkdir(parents=True)
    (bad / "1.txt").write_text("Is it red? Please answer yes or no.\tMaybe\n")
    with pytest.raises(ValueError, match="1.txt:1: expected 'question<TAB>Yes|No'"):
        read_ground_truth(str(tmp_path / "MME"))


def test_cli_writes_metrics_and_refuses_other_protocols(mme, tmp_path, capsys):
    answers = tmp_path / "mme_answers.jsonl"
    rows = [{**a, "gen": {"template": "vicuna_v1"}} for a in _answers(mme, HAND)]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev.main(["mme", "--answers", str(answers), "--mme-root", mme["mme_root"]])
    out = json.loads((tmp_path / "mme.json").read_text())
    assert out["kind"] == "mme" and out["metrics"]["subtasks"]["color"]["score"] == 25.0
    assert "'other' answers 2/12" in capsys.readouterr().out
    rows[3]["gen"] = {"template": "llava_hf"}
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="from 2 protocols"):
        ev.main(["mme", "--answers", str(answers), "--mme-root", mme["mme_root"]])
    rows[3]["gen"], rows[3]["prompt"] = rows[0]["gen"], rows[3]["prompt"].split("\n")[0]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="without LLaVA's short-answer suffix"):
        ev.main(["mme", "--answers", str(answers), "--mme-root", mme["mme_root"]])
    assert SUBTASKS[0] == "existence" and len(SUBTASKS) == 14
