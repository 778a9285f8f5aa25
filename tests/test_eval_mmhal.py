"""MMHal-Bench: the official template's schema (errors name file, record, field), images by image_src basename or
image_id, the official rating rule, the judge against a stub OpenAI-compatible server on loopback (text-only prompt
with the record's fields, temperature 0, per-type scores by index % 8, replies without or with several ratings
scored 0 and counted, resume, API failures), the official template read from a LLaVA-RLHF-shaped file, and the CLI."""
import json
import os
import shutil

import pytest

import eval as ev
from chat_api import ChatClient
from evals.mmhal import (TYPES, fill_template, image_file, judge_prompt, judged_records, make_judge, mmhal_judge,
                        official_rating, read_official_template, read_template, template_questions)
from rehearsal.public_data import MMHAL, make_public_data
from rehearsal.stub_openai import StubServer

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes", "eval.toml")


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    return make_public_data(tmp_path_factory.mktemp("public"), image_size=48)


@pytest.mark.parametrize("text,expected", [
    ("The answer is right.\nRating: 4", (4, 1)), ("rating: 0", (0, 1)), ("RATING: 3, not informative", (3, 1)),
    ("Rating: 5. To repeat, Rating: 5", (5, 1)),  # one level found twice is one hit
    ("First Rating: 2, on reflection Rating: 5", (0, 2)),  # several levels: 0 (the official rule)
    ("**Rating:** 6", (0, 0)), ("Rating:5", (0, 0)), ("I would give it a four.", (0, 0)), ("", (0, 0)),
    ("Rating: 7", (0, 0)), ("Rating: 6 out of 6", (6, 1))])
def test_official_rating(text, expected):
    assert official_rating(text) == expected


def test_template_schema_and_images(pub, tmp_path):
    recs = read_template(pub["mmhal_template"])
    assert [r["question_type"] for r in recs] == list(TYPES) and len(recs) == len(MMHAL)
    qs = template_questions(pub["mmhal_template"], pub["mmhal_images"])
    assert [q["question_id"] for q in qs] == list(range(8)) and qs[0]["prompt"] == "What color are the cat's eyes?"
    assert qs[0]["suffix"] == "" and qs[0]["answer_base"]["image_src"] == recs[0]["image_src"]
    assert os.path.basename(qs[3]["image_file"]) == "4504_d4e5f6a7b8_o.jpg"  # the basename of image_src
    # an image stored under its image_id is found too; a missing one names its record
    root = tmp_path / "images"
    shutil.copytree(pub["mmhal_images"], root)
    os.rename(root / "3403_c3d4e5f6a7_o.jpg", root / (recs[2]["image_id"] + ".jpg"))
    assert image_file(recs[2], 2, "t.json", str(root)).endswith(recs[2]["image_id"] + ".jpg")
    os.remove(root / "4504_d4e5f6a7b8_o.jpg")
    with pytest.raises(FileNotFoundError, match=r"response_template.json: record 3 \(image_id '3d904c6fce51708a', "
                                                r"image_src 'https://.*4504_d4e5f6a7b8_o.jpg'\): no image"):
        template_questions(pub["mmhal_template"], str(root))
    with pytest.raises(ValueError, match="pass --image-root"):
        template_questions(pub["mmhal_template"], None)
    bad = tmp_path / "t.json"
    for rec_i, change, message in [
            (1, lambda r: r.pop("gt_answer"), "t.json: record 1: missing field 'gt_answer'"),
            (0, lambda r: r.update(image_content="Cat"), "t.json: record 0: field 'image_content' must be a list"),
            (5, lambda r: r.update(question=None), "t.json: record 5: field 'question' must be a string")]:
        data = json.loads(open(pub["mmhal_template"]).read())
        change(data[rec_i])
        bad.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=message):
            read_template(str(bad))
    bad.write_text(json.dumps({"question": "x"}))
    with pytest.raises(ValueError, match="t.json: expected a JSON list"):
        read_template(str(bad))
    # filling keeps the order and every field; a missing answer is an error
    filled = fill_template(recs, {str(i): f"answer {i}" for i in range(8)})
    assert [r["model_answer"] for r in filled] == [f"answer {i}" for i in range(8)]
    assert [{k: v for k, v in r.items() if k != "model_answer"} for r in filled] == \
           [{k: v for k, v in r.items() if k != "model_answer"} for r in recs]
    with pytest.raises(ValueError, match="1 of 8 MMHal questions have no answer yet, e.g. \\[7\\]"):
        fill_template(recs, {str(i): "a" for i in range(7)})


def judge_by_response(body):
    """A deterministic judge reading the response back out of the prompt (ours or the stand-in template)."""
    prompt = body["messages"][0]["content"]
    response = prompt.split("LMM response to grade: ")[-1].split("## response\n")[-1].strip()
    if "silence" in response:
        return "I cannot tell."  # no rating: 0
    if "waffle" in response:
        return "Rating: 2 at first, but then Rating: 4"  # several: 0
    if "dog" in response:
        return "The response invents a dog.\nRating: 1"
    return "Accurate and informative.\nRating: 5"


def _records(pub, answers):
    return judged_records(pub["mmhal_template"], {str(i): a for i, a in enumerate(answers)})


def test_judge_on_stub(pub, tmp_path):
    answers = ["Green.", "The dog is drinking coffee.", "The motorcycle.", "silence", "A helmet.", "At night.",
               "waffle", "A dog shook it."]
    recs = _records(pub, answers)
    out = str(tmp_path / "judge.jsonl")
    with StubServer(handler=judge_by_response) as srv:
        client = ChatClient(base_url=srv.url, api_key="k", max_attempts=2, sleep=lambda s: None)
        m = mmhal_judge(recs, "judge-model", out, workers=2, client=client)
        n_first = len(srv.requests)
        m2 = mmhal_judge(recs, "judge-model", out, workers=2, client=client)  # resume: nothing asked again
        assert len(srv.requests) == n_first == 8 and m2 == m
        body = srv.requests[0].body
    assert body["model"] == "judge-model" and body["temperature"] == 0.0 and len(body["messages"]) == 1
    assert isinstance(body["messages"][0]["content"], str)  # text only: the judge never sees the image
    prompt = judge_prompt(recs[1], make_judge())
    assert "Image contents: Coffee cup, Saucer, Spoon, Table" in prompt  # the labels joined by ", "
    assert "Question: What is the dog drinking from the cup?" in prompt and "Standard answer: There is no dog" in prompt
    assert "LMM response to grade: The dog is drinking coffee." in prompt
    for level in ("6 = very informative, with good analysis or reasoning, no hallucination",
                  "3 = not informative, no hallucination", "0 = not informative, with hallucination"):
        assert level in prompt
    ratings = [5, 1, 5, 0, 5, 5, 0, 1]
    assert m["ratings"] == {str(i): r for i, r in enumerate(ratings)}
    assert m["score"] == pytest.approx(sum(ratings) / 8) and m["hallucination_rate"] == pytest.approx(4 / 8)
    assert list(m["per_type_score"]) == list(TYPES)  # the official names, in order (question i has type i % 8)
    assert m["per_type_score"]["adversarial"] == 1 and m["per_type_score"]["counting"] == 0
    assert (m["n_no_rating"], m["n_several_ratings"], m["n_judged"], m["complete"]) == (1, 1, 8, True)
    assert not m["full_benchmark"] and m["n_type_mismatch"] == 0
    logged = {r["question_id"]: r for r in map(json.loads, open(out))}
    assert logged[3]["judge_reply"] == "I cannot tell." and logged[3]["judge_template"] == "povid"
    # a log judged with another template is never mixed in
    with pytest.raises(ValueError, match="judge.jsonl: question .* was judged with .*'povid'"):
        mmhal_judge(recs, "judge-model", out, judge={**make_judge(), "name": "official", "sha256": "x"},
                    client=client)


def test_api_failures_leave_no_partial_score(pub, tmp_path):
    recs = _records(pub, ["Green."] * 8)
    out = str(tmp_path / "judge.jsonl")
    with StubServer(handler=judge_by_response) as srv:
        srv.fail_next("503", "503")  # one item exhausts its two attempts
        client = ChatClient(base_url=srv.url, api_key="k", max_attempts=2, sleep=lambda s: None)
        m = mmhal_judge(recs, "j", out, workers=1, client=client)
        assert m["n_failed"] == 1 and m["n_judged"] == 7 and not m["complete"]
        assert m["score"] is None and m["hallucination_rate"] is None and m["per_type_score"]["attribute"] is None
        m = mmhal_judge(recs, "j", out, workers=1, client=client)
        assert m["complete"] and m["score"] == 5 and len(srv.requests) == 8 + 2


STAND_IN = '''"""A stand-in shaped like LLaVA-RLHF's eval_gpt4.py: a top-level `template`, four positional fields."""
import json

template = """Grade the response; end with "Rating: N" (0-6).
## contents
{}
## question
{}
## reference
{}
## response
{}
"""

if __name__ == "__main__":
    print(template.format(1, 2, 3, 4))
'''


def test_official_template_file(pub, tmp_path):
    f = tmp_path / "eval_gpt4.py"
    f.write_text(STAND_IN)
    judge = make_judge(str(f))
    assert judge["name"] == "official" and judge["file"] == str(f) and len(judge["sha256"]) == 64
    rec = _records(pub, ["A dog."] * 8)[4]
    assert judge_prompt(rec, judge) == ('Grade the response; end with "Rating: N" (0-6).\n## contents\n'
                                        'Person, Helmet, Flag\n## question\nWhat is in front of the woman on the right '
                                        'side of the image?\n## reference\nA white helmet.\n## response\nA dog.\n')
    f.write_text(STAND_IN.replace("## response\n{}", "## response"))
    with pytest.raises(ValueError, match="eval_gpt4.py: the template must have exactly four"):
        read_official_template(str(f))
    f.write_text("prompt = 'x {} {} {} {}'\n")
    with pytest.raises(ValueError, match="eval_gpt4.py: expected one top-level string assigned to `template`"):
        read_official_template(str(f))


def test_cli(pub, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "answers.jsonl").write_text("".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in enumerate(
        ["Green.", "A dog.", "The motorcycle.", "24.", "A helmet.", "Night.", "A man with a camera.", "Motion."])))
    (tmp_path / "eval_gpt4.py").write_text(STAND_IN)
    with StubServer(handler=judge_by_response) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-unit-test-key")
        ev.main(["mmhal", "--recipe", RECIPE + ":mmhal", "--questions", pub["mmhal_template"], "--answers",
                 str(run / "answers.jsonl"), "--out", str(run / "mmhal.json")])
        ev.main(["mmhal", "--questions", pub["mmhal_template"], "--answers", str(run / "answers.jsonl"),
                 "--judge-model", "j", "--judge-template", str(tmp_path / "eval_gpt4.py"),
                 "--out", str(run / "official" / "mmhal.json")])
        assert srv.requests[0].headers["Authorization"] == "Bearer sk-unit-test-key"
        assert srv.requests[0].body["model"] == "gpt-4-0314"  # the recipe's judge model
        assert srv.requests[-1].body["messages"][0]["content"].startswith("Grade the response")
    d = json.loads((run / "mmhal.json").read_text())
    assert d["kind"] == "mmhal" and d["judge_model"] == "gpt-4-0314" and d["judge_template"]["name"] == "povid"
    assert d["metrics"]["score"] == pytest.approx((7 * 5 + 1) / 8) and (run / "mmhal_judge.jsonl").exists()
    o = json.loads((run / "official" / "mmhal.json").read_text())
    assert o["judge_template"] == {"name": "official", "file": str(tmp_path / "eval_gpt4.py"),
                                   "sha256": make_judge(str(tmp_path / "eval_gpt4.py"))["sha256"]}
    out = capsys.readouterr().out
    assert "MMHal (gpt-4-0314, povid judge template): score 4.50  hallucination rate 0.12" in out
    assert "per type (attribute,adversarial,comparison,counting,relation,environment,holistic,other) " \
           "5.00,1.00,5.00,5.00,5.00,5.00,5.00,5.00" in out
    for p in run.rglob("*"):
        assert p.is_dir() or "sk-unit-test-key" not in p.read_text()
    # a filled template is judged as it is; an unfilled one (empty model_answer) without --answers is an error
    filled = tmp_path / "filled.json"
    filled.write_text(json.dumps(fill_template(read_template(pub["mmhal_template"]), {str(i): "x" for i in range(8)})))
    assert [r["response"] for r in judged_records(str(filled))] == ["x"] * 8
    with pytest.raises(ValueError, match="response_template.json: record 0: no answer"):
        judged_records(pub["mmhal_template"])
    (run / "bad.jsonl").write_text(json.dumps({"question_id": 9, "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="1 answers to unknown MMHal questions"):
        judged_records(pub["mmhal_template"], {"9": "x"})
