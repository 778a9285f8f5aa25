"""ScienceQA-IMG: LLaVA's answer parsing on hand-built answers (each case names the rule it checks), accuracy and
IMG-Accuracy and ScienceQA's per subject / context / grade / topic table equal, line for line, to what the official
scripts printed on the same answer sets (LLaVA's llava/eval/eval_science_qa.py, then ScienceQA's
tools/evaluate_acc.py on its --output-result, run on the public-schema tree of rehearsal/public_bench.py; quoted
below), LLaVA-v1.5-13b's real answers (the shared copy), the question reader's prompts, and bad input."""
import json
import os

import pytest

import eval as ev
from evals.sqa import (LETTER_SUFFIX, llava_line, parse_answer, pred_index, question_records, read_answers,
                       read_problems, scienceqa_lines, sqa_scores)
from rehearsal.public_bench import make_sqa

OFFICIAL_DIR = os.path.join(os.path.dirname(__file__), "data", "official")  # verbatim subsets: SOURCES.md


@pytest.mark.parametrize("text,letter,rule", [
    ("B", "B", "exactly a letter A-E"),
    ("E", "E", "exactly a letter (whether the problem has an E is decided later)"),
    ("b", "FAILED", "case-sensitive: a lowercase letter is no letter"),
    ("C. Helena", "C", "'X. ' prefix"),
    ("B.", "FAILED", "'X.' without the space is not the prefix rule"),
    ("B\n", "FAILED", "the answer is not stripped by the scorer"),
    (" A", "FAILED", "a leading space"),
    ("(B)", "FAILED", "parenthesised"),
    ("Answer: B", "FAILED", "no rule matches"),
    ("The answer is B.", "B", "'The answer is X.' once"),
    ("The answer is Bx", "B", "the regex's '.' is a wildcard"),
    ("The answer is A!", "A", "the regex's '.' is a wildcard"),
    ("The answer is A. The answer is B.", "FAILED", "two 'The answer is' matches"),
    ("The answer is a.", "FAILED", "the regex wants a capital"),
    ("The answer is Z.", "Z", "the regex takes any capital; Z is then out of range"),
    ("", "FAILED", "an empty answer"),
])
def test_parse_answer(text, letter, rule):
    assert parse_answer(text) == letter, rule


def test_pred_index_range():
    assert pred_index("E", 5) == 4 and pred_index("E", 4) == -1 and pred_index("Z", 5) == -1
    assert pred_index("FAILED", 2) == -1


@pytest.fixture(scope="module")
def sqa(tmp_path_factory):
    return make_sqa(str(tmp_path_factory.mktemp("bench")))


# hand-built answer sets over the fixture's 8 test problems (pids 1-8; 1, 3, 4, 6, 8 have an image)
SETS = {
    "a": {"1": "A", "2": "The answer is A. The answer is B.", "3": "C. Helena", "4": "The answer is Bx",
          "6": "E", "7": "E", "8": "b"},  # 5 (text-only) unanswered; 7 has 2 choices, so E is out of range
    "b": {"1": "", "2": "B. avocado", "3": "(C)", "4": "B.", "5": " A", "6": "The answer is E.",
          "7": "The answer is a.", "8": "Answer: B"},
    "c": {"1": "The answer is Z.", "2": "A", "3": "C", "4": "B. Solution B", "5": "A. a solid", "6": "E. Nauru",
          "7": "The answer is A!", "8": "B\n"},
}
# what the official scripts printed on each set: eval_science_qa.py's line, then evaluate_acc.py's first 9 lines
# (its 26 topic lines follow; the fixture's topics are checked through `topics` below)
OFFICIAL = {
    "a": ["Total: 8, Correct: 4, Accuracy: 50.00%, IMG-Accuracy: 80.00%", "natural: \t66.67", "social: \t66.67",
          "language: \t0.00", "has_text: \t66.67", "has_image: \t80.00", "no_context: \t0.00", "grade_1_6: \t40.00",
          "grade_7_12: \t66.67", "average: \t50.00"],
    "b": ["Total: 8, Correct: 1, Accuracy: 12.50%, IMG-Accuracy: 20.00%", "natural: \t0.00", "social: \t33.33",
          "language: \t0.00", "has_text: \t0.00", "has_image: \t20.00", "no_context: \t0.00", "grade_1_6: \t0.00",
          "grade_7_12: \t33.33", "average: \t12.50"],
    "c": ["Total: 8, Correct: 6, Accuracy: 75.00%, IMG-Accuracy: 60.00%", "natural: \t66.67", "social: \t66.67",
          "language: \t100.00", "has_text: \t33.33", "has_image: \t60.00", "no_context: \t100.00",
          "grade_1_6: \t60.00", "grade_7_12: \t100.00", "average: \t75.00"],
}
OFFICIAL_PARSED = {  # eval_science_qa.py --output-file's parsed_ans, per problem
    "a": "A FAILED C B FAILED E E FAILED", "b": "FAILED B FAILED FAILED FAILED E FAILED FAILED",
    "c": "Z A C B A E A FAILED"}


def _answers(sqa, texts):
    """Answer lines as model_vqa_science.py writes them (its prompt: "<image>\\n" for image questions + suffix)."""
    qs = {q["question_id"]: q for q in question_records(sqa["sqa_questions"], image_only=False)}
    return {pid: {"question_id": pid, "prompt": qs[pid]["prompt"], "text": t} for pid, t in texts.items()}


@pytest.mark.parametrize("name", sorted(SETS))
def test_scores_equal_official_printout(sqa, name):
    s = sqa_scores(read_problems(sqa["sqa_dir"]), _answers(sqa, SETS[name]))
    m = s["metrics"]
    assert [llava_line(m)] + scienceqa_lines(m)[:9] == OFFICIAL[name]
    assert " ".join(s["parsed"][str(p)] for p in range(1, 9)) == OFFICIAL_PARSED[name]
    lines = scienceqa_lines(m)[9:]  # the topics, in evaluate_acc.py's order: -1 where the split has none
    assert len(lines) == 26 and lines[0] == "punctuation: \t-1"
    assert m["topics"]["geography"]["n"] == 3


def test_counts_beside_the_accuracy(sqa):
    m = sqa_scores(read_problems(sqa["sqa_dir"]), _answers(sqa, SETS["a"]))["metrics"]
    assert (m["n_answered"], m["n_missing"], m["n_failed"], m["n_out_of_range"]) == (7, 1, 2, 1)
    assert m["unparseable_rate"] == 2 / 7 and m["img_total"] == 5 and m["total"] == 8


def test_llava_13b_real_answers():
    """LLaVA-v1.5-13b's answers to the shared 26 problems; eval_science_qa.py prints the line below, and the
    per-item correctness agrees with the `correct` flag stored with each answer."""
    d = OFFICIAL_DIR
    problems, answers = read_problems(os.path.join(d, "SQA")), read_answers(
        os.path.join(d, "SQA", "llava-v1.5-13b_answers.jsonl"))
    s = sqa_scores(problems, answers)
    assert llava_line(s["metrics"]) == "Total: 26, Correct: 15, Accuracy: 57.69%, IMG-Accuracy: 60.00%"
    assert s["parsed"]["27"] == "A" and s["parsed"]["42"] == "E"  # "A. hyperbole"; E of 5 choices
    assert all((s["results"][k] == problems[k]["answer"]) == a["correct"] for k, a in answers.items())
    qs = question_records(os.path.join(d, "SQA", "llava_test_CQM-A.json"), image_only=False)
    assert [q["prompt"] for q in qs] == [answers[q["question_id"]]["prompt"] for q in qs]  # LLaVA's own prompts


def test_question_reader(sqa):
    img = question_records(sqa["sqa_questions"], image_root=sqa["sqa_images"])
    assert [q["question_id"] for q in img] == ["1", "3", "4", "6", "8"]  # image questions only, by default
    assert img[0]["prompt"].startswith("<image>\nContext: Arctic hares") and img[0]["prompt"].endswith(LETTER_SUFFIX)
    assert img[0]["image_file"] == os.path.join(sqa["sqa_images"], "1", "image.png")
    assert os.path.isfile(img[0]["image_file"])
    text = [q for q in question_records(sqa["sqa_questions"], image_only=False) if q["image_file"] is None]
    assert text[0]["prompt"].startswith("Which word would you find")


def test_bad_inputs(sqa, tmp_path):
    problems = read_problems(sqa["sqa_dir"])
    answers = _answers(sqa, SETS["a"])
    with pytest.raises(ValueError, match="not problems of this split.*'9'"):  # a train problem
        sqa_scores(problems, {**answers, "9": {"question_id": "9", "prompt": LETTER_SUFFIX, "text": "A"}})
    with pytest.raises(ValueError, match="1 image question\\(s\\) have no answer.*'1'"):
        sqa_scores(problems, {k: v for k, v in answers.items() if k != "1"})
    with pytest.raises(ValueError, match="without LLaVA's letter instruction"):
        sqa_scores(problems, {**answers, "1": {**answers["1"], "prompt": "Which animal?"}})
    twice = tmp_path / "twice.jsonl"
    twice.write_text("".join(json.dumps(r) + "\n" for r in [*answers.values(), answers["1"]]))
    with pytest.raises(ValueError, match="question_id '1' appears twice"):
        read_answers(str(twice))
    mme = tmp_path / "llava_mme.json"  # another benchmark's file given as the question file
    mme.write_text(json.dumps([{"question_id": "color/1.jpg", "text": "Is it red?"}]))
    with pytest.raises(ValueError, match="not LLaVA's ScienceQA question file"):
        question_records(str(mme))
    with pytest.raises(ValueError, match="no split 'tset'"):
        read_problems(sqa["sqa_dir"], "tset")


def test_cli(sqa, tmp_path, capsys):
    answers = tmp_path / "sqa_answers.jsonl"
    answers.write_text("".join(json.dumps({**r, "gen": {"template": "vicuna_v1"}}) + "\n"
                               for r in _answers(sqa, SETS["a"]).values()))
    ev.main(["sqa", "--answers", str(answers), "--base-dir", sqa["sqa_dir"]])
    out = capsys.readouterr().out
    assert OFFICIAL["a"][0] in out and "unparseable 2/7 answers" in out
    m = json.loads((tmp_path / "sqa.json").read_text())
    assert m["kind"] == "sqa" and m["metrics"]["img_accuracy"] == 0.8 and m["results"]["7"] == -1
