"""MMHal-Bench: rating parsing, and the judge run against a stub OpenAI-compatible server on loopback (prompt
contents, retries of unparseable replies, unparseable ones counted apart, resume, the CLI on the official
template layout)."""
import json

import pytest

import eval as ev
from chat_api import ChatClient
from eval import mmhal_judge, parse_rating
from stub_openai import StubServer


@pytest.mark.parametrize("text,rating", [
    ("The answer matches.\nRating: 4", 4), ("rating: 0", 0), ("**Rating:** 6", 6), ("Rating = 5.", 5),
    ("Rating: [3]", 3), ("Explanation...\nRATING:2", 2),
    ("First I thought Rating: 2, but on reflection\nRating: 5", 5),  # disagreement: the last line decides
    ("Rating: 2 or Rating: 5", None), ("Rating: 7", None), ("I would give it a four.", None), ("", None),
    ("6: very informative\n3: not informative", None)])  # echoing the scale is no rating
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


RECORDS = [
    {"question_id": 0, "question": "What animal is on the sofa?", "answer": "A dog sleeping.",
     "gt_answer": "A dog.", "image_content": ["Dog", "Sofa"], "question_type": "attribute"},
    {"question_id": 1, "question": "How many cups?", "answer": "Three cups and a cat.", "gt_answer": "Two.",
     "image_content": ["Cup", "Table"], "question_type": "counting"},
    {"question_id": 2, "question": "What color is the car?", "answer": "It is red.", "gt_answer": "Red.",
     "image_content": ["Car"], "question_type": "attribute"},
    {"question_id": 3, "question": "Is it raining?", "answer": "gibberish", "gt_answer": "No.",
     "facts": "a sunny street", "question_type": "environment"},
]


def judge(body):
    """A deterministic judge: reads the answer out of the prompt."""
    prompt = body["messages"][0]["content"]
    answer = prompt.split("Answer to grade: ")[1].split("\n")[0]
    if "gibberish" in answer:
        return "I cannot judge this."  # never parseable
    if "cat" in answer:
        return "The answer invents a cat and miscounts.\nRating: 1"
    return "Correct and informative.\nRating: 5" if "dog" in answer else "Correct.\nRating: 4"


def test_judge_on_stub(tmp_path):
    out = str(tmp_path / "judge.jsonl")
    with StubServer(handler=judge) as srv:
        srv.fail_next("500", "text:Rating: maybe")  # a server error and an unparseable reply, both retried
        client = ChatClient(base_url=srv.url, api_key="k", max_attempts=3, sleep=lambda s: None)
        m = mmhal_judge(RECORDS, "judge-model", out, workers=1, client=client)
        n_first = len(srv.requests)
        prompt = srv.requests[-1].body["messages"][0]["content"]
        first = srv.requests[0].body
        # resume: everything is judged already, nothing is asked again
        m2 = mmhal_judge(RECORDS, "judge-model", out, workers=1, client=client)
        assert len(srv.requests) == n_first and m2 == m
    assert first["model"] == "judge-model" and first["temperature"] == 0.0
    assert n_first == 2 + 3 + 3  # item 0 after 2 failures; items 1, 2 once; item 3: 3 unparseable attempts
    assert "Image facts: a sunny street" in prompt and "Question: Is it raining?" in prompt
    assert "Reference answer: No." in prompt and "Answer to grade: gibberish" in prompt
    assert m["n"] == 4 and m["n_rated"] == 3 and m["n_unparsed"] == 1 and m["n_failed"] == 0
    assert m["score"] == pytest.approx((5 + 1 + 4) / 3)  # the unparseable reply is not scored 0
    assert m["hallucination_rate"] == pytest.approx(1 / 3)
    assert m["per_type_score"] == {"attribute": 4.5, "counting": 1.0}
    recs = {r["question_id"]: r for r in map(json.loads, open(out))}
    assert recs[3]["rating"] is None and recs[3]["judge_reply"] == "I cannot judge this."
    assert recs[1]["rating"] == 1 and "invents a cat" in recs[1]["judge_reply"]


def test_api_failures_are_counted_and_redone(tmp_path):
    out = str(tmp_path / "judge.jsonl")
    with StubServer(handler=judge) as srv:
        srv.fail_next("503", "503")  # item 0 exhausts its 2 attempts
        client = ChatClient(base_url=srv.url, api_key="k", max_attempts=2, sleep=lambda s: None)
        m = mmhal_judge(RECORDS[:3], "j", out, workers=1, client=client)
        assert m["n_failed"] == 1 and m["n_rated"] == 2 and "HTTP 503" in m["failed"]["0"]
        m = mmhal_judge(RECORDS[:3], "j", out, workers=1, client=client)
        assert m["n_failed"] == 0 and m["n_rated"] == 3 and len(srv.requests) == 5


def test_cli_on_official_template(tmp_path, monkeypatch, capsys):
    template = [{"question_type": r["question_type"], "question_topic": "t", "image_id": f"img{i}",
                 "image_src": "http://example.invalid/x.jpg", "image_content": r.get("image_content", []),
                 "question": r["question"], "gt_answer": r["gt_answer"], "model_answer": r["answer"]}
                for i, r in enumerate(RECORDS[:3])]
    (tmp_path / "mmhal.json").write_text(json.dumps(template))
    run = tmp_path / "run"
    with StubServer(handler=judge) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-unit-test-key")
        ev.main(["mmhal", "--questions", str(tmp_path / "mmhal.json"), "--judge-model", "j",
                 "--out", str(run / "mmhal.json")])
        # answers from a generate run override the template's model_answer, matched by question_id = index
        (tmp_path / "answers.jsonl").write_text("".join(
            json.dumps({"question_id": i, "text": "A cat."}) + "\n" for i in range(3)))
        ev.main(["mmhal", "--questions", str(tmp_path / "mmhal.json"), "--answers", str(tmp_path / "answers.jsonl"),
                 "--judge-model", "j", "--out", str(run / "other" / "mmhal.json")])
        assert srv.requests[0].headers["Authorization"] == "Bearer sk-unit-test-key"
    d = json.loads((run / "mmhal.json").read_text())
    assert d["kind"] == "mmhal" and d["judge_model"] == "j"
    assert d["metrics"]["score"] == pytest.approx((5 + 1 + 4) / 3)
    assert json.loads((run / "other" / "mmhal.json").read_text())["metrics"]["score"] == 1.0
    assert (run / "mmhal_judge.jsonl").exists()
    assert "score 3.33  hallucination rate 33.3" in capsys.readouterr().out
    for p in run.rglob("*"):
        assert p.is_dir() or "sk-unit-test-key" not in p.read_text()
    (tmp_path / "answers.jsonl").write_text(json.dumps({"question_id": 9, "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="1 answers to unknown questions"):
        ev.load_mmhal(str(tmp_path / "mmhal.json"), str(tmp_path / "answers.jsonl"))
