"""chat_api: retries on every failure kind of the stub server, Retry-After, validation retries, key redaction, and the
resumable JSONL runner (a third of requests failing; a run killed mid-way and restarted)."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

import chat_api
from chat_api import ChatClient, ChatError, image_data_url, resume_jsonl, run_jsonl_jobs
from rehearsal.stub_openai import StubServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "sk-test-SECRET-0123456789"
MSG = [{"role": "user", "content": "hello"}]


def client(srv, **kw):
    sleeps = []
    kw.setdefault("max_attempts", 3)
    c = ChatClient(base_url=srv.url, api_key=SECRET, sleep=sleeps.append, seed=0, **kw)
    return c, sleeps


@pytest.mark.parametrize("failure", ["429", "500", "503", "hang", "truncated", "nonjson", "noshape"])
def test_each_failure_kind_is_retried(failure):
    with StubServer(hang_s=3.0) as srv:
        srv.fail_next(failure)
        c, sleeps = client(srv)
        assert c.chat(MSG, model="m", timeout=0.5) == "echo: hello"
        assert [r.action for r in srv.requests] == [failure, "ok"]
        assert len(sleeps) == 1 and 0 < sleeps[0] < 2.0  # one backoff, base 1 s with jitter in [0.5, 1.5)
        assert srv.requests[0].headers["Authorization"] == f"Bearer {SECRET}"  # the key is sent...
        assert srv.requests[0].body["model"] == "m" and srv.requests[0].body["messages"] == MSG


def test_retry_after_is_a_lower_bound_and_backoff_grows():
    with StubServer(retry_after="7") as srv:
        srv.fail_next("429", "500", "500")
        c, sleeps = client(srv, max_attempts=4, backoff_s=0.01)
        c.chat(MSG, model="m")
        assert sleeps[0] >= 7.0  # honoured although the computed backoff is ~0.01 s
        assert 0.01 <= sleeps[1] < 0.03 and 0.02 <= sleeps[2] < 0.06  # base * 2^k * jitter
    assert chat_api.parse_retry_after("2.5") == 2.5
    assert chat_api.parse_retry_after("garbage") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 100))
    assert 90 < chat_api.parse_retry_after(future) <= 100


def test_validate_rejects_are_retried_then_reported():
    def validate(text):
        return None if text.startswith("echo") else f"not an echo: {text[:10]!r}"

    with StubServer() as srv:
        srv.fail_next("text:garbage")
        c, _ = client(srv)
        assert c.chat(MSG, model="m", validate=validate) == "echo: hello"
        srv.fail_next("text:bad1", "text:bad2", "text:bad3")
        with pytest.raises(ChatError) as ei:
            c.chat(MSG, model="m", validate=validate)
    e = ei.value
    assert e.last_kind == "validation" and e.last_text == "bad3" and len(e.reasons) == 3
    assert "not an echo" in str(e) and "all 3 attempts failed" in str(e)


def test_client_error_fails_at_once():
    with StubServer() as srv:
        srv.fail_next("401")
        c, sleeps = client(srv)
        with pytest.raises(ChatError, match="non-retryable.*HTTP 401"):
            c.chat(MSG, model="m")
        assert len(srv.requests) == 1 and sleeps == []


def test_key_is_redacted_everywhere(caplog, tmp_path, monkeypatch):
    def leaky(body):  # a server that echoes the key into its error text
        raise RuntimeError(f"invalid api key {SECRET}")

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with StubServer(handler=leaky) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        c, _ = client(srv, max_attempts=2)
        assert SECRET not in repr(c)
        with pytest.raises(ChatError) as ei:
            c.chat(MSG, model="m")
        assert SECRET not in str(ei.value) and "***" in str(ei.value)
        out = tmp_path / "out.jsonl"
        s = run_jsonl_jobs([{"id": 1}], lambda it: it["id"],
                           lambda it: {"text": c.chat(MSG, model="m")}, str(out), workers=1)
    assert s.done == 0 and list(s.failed) == ["1"]
    failed = (tmp_path / "out.failed.jsonl").read_text()
    assert "HTTP 500" in failed and SECRET not in failed and SECRET not in caplog.text
    assert not out.exists() or SECRET not in out.read_text()


def _stub_items(n):
    return [{"id": i, "q": f"item {i}"} for i in range(n)]


def test_runner_third_of_requests_failing(tmp_path):
    kinds = ["429", "500", "nonjson", "truncated", "noshape"]
    tries: dict = {}

    def failure_fn(i, body):  # the first attempt of every even item fails, cycling through the failure kinds
        item = int(body["messages"][-1]["content"].split()[-1])
        tries[item] = tries.get(item, 0) + 1
        return kinds[item // 2 % len(kinds)] if item % 2 == 0 and tries[item] == 1 else None

    def validate(text):  # item 13 can never be answered correctly: a persistent per-item failure
        return "item 13 is cursed" if text.endswith("item 13") else None

    out = str(tmp_path / "answers.jsonl")
    with StubServer(failure_fn=failure_fn) as srv:
        c, _ = client(srv, max_attempts=4)

        def work(it):
            return {"text": c.chat([{"role": "user", "content": it["q"]}], model="m", validate=validate)}

        s = run_jsonl_jobs(_stub_items(30), lambda it: it["id"], work, out, workers=3)
        n_first = len(srv.requests)
        # 15 even items fail once, item 13 is rejected 4 times: 15 + 4 of 30 + 15 + 3 requests (~40%) fail
        assert n_first == 48 and sum(r.action != "ok" for r in srv.requests) == 15
        assert s.done == 29 and s.skipped == 0 and list(s.failed) == ["13"]
        assert "cursed" in s.failed["13"]
        failed = [json.loads(line) for line in open(tmp_path / "answers.failed.jsonl")]
        assert [f["id"] for f in failed] == [13]
        # second run: only the failed item is tried again, nothing done twice
        s2 = run_jsonl_jobs(_stub_items(30), lambda it: it["id"], work, out, workers=3)
        asked_again = {r.body["messages"][-1]["content"] for r in srv.requests[n_first:]}
        assert asked_again == {"item 13"} and s2.skipped == 29 and s2.done == 0
    recs = [json.loads(line) for line in open(out)]
    assert sorted(r["id"] for r in recs) == [i for i in range(30) if i != 13]
    assert all(r["text"] == f"echo: item {r['id']}" for r in recs)


KILL_SCRIPT = """
import logging, sys
sys.path.insert(0, {root!r})
logging.basicConfig(level=logging.INFO)
from chat_api import ChatClient, run_jsonl_jobs
c = ChatClient(max_attempts=3, backoff_s=0.01)
items = [{{"id": i, "q": f"item {{i}}"}} for i in range({n})]
run_jsonl_jobs(items, lambda it: it["id"],
               lambda it: {{"text": c.chat([{{"role": "user", "content": it["q"]}}], model="m")}},
               {out!r}, workers=2)
"""


def test_runner_killed_mid_run_resumes_without_repeats(tmp_path, monkeypatch, caplog):
    n = 40
    out = str(tmp_path / "answers.jsonl")

    def slow(body):
        time.sleep(0.05)
        return f"echo: {body['messages'][-1]['content']}"

    with StubServer(handler=slow, failure_fn=lambda i, b: "500" if i % 5 == 0 else None) as srv:
        env = dict(os.environ, OPENAI_BASE_URL=srv.url, OPENAI_API_KEY=SECRET)
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(root=ROOT, n=n, out=out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 20
        while time.time() < deadline and (not os.path.exists(out) or open(out).read().count("\n") < 10):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
        assert SECRET not in err.decode()
        first = [json.loads(line)["id"] for line in open(out)]
        assert 10 <= len(first) < n, "the run should have been killed part-way"
        with open(out, "ab") as f:  # what a kill in the middle of a write would leave
            f.write(b'{"id": 999, "text": "ha')
        n_before = len(srv.requests)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        caplog.set_level(logging.INFO)
        c, _ = client(srv, max_attempts=4)
        s = run_jsonl_jobs([{"id": i, "q": f"item {i}"} for i in range(n)], lambda it: it["id"],
                           lambda it: {"text": c.chat([{"role": "user", "content": it["q"]}], model="m")},
                           out, workers=2)
        asked_again = {r.body["messages"][-1]["content"] for r in srv.requests[n_before:]}
    assert "truncated last line" in caplog.text
    assert s.skipped == len(first) and s.done == n - len(first) and not s.failed
    assert not asked_again & {f"item {i}" for i in first}  # nothing done in the first run was asked again
    ids = [json.loads(line)["id"] for line in open(out)]
    assert sorted(ids) == list(range(n))  # every item exactly once, the truncated line gone
    assert SECRET not in open(out).read() and SECRET not in caplog.text


def test_resume_rejects_corrupt_files(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: not a JSON line"):
        resume_jsonl(str(p), "id")
    p.write_text('{"id": 1}\n{"id": "1"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: id '1' appears twice"):
        resume_jsonl(str(p), "id")
    p.write_text('{"id": 1}\n{"key": 3}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: record has no 'id'"):
        resume_jsonl(str(p), "id")
    with pytest.raises(ValueError, match="appears twice in the input"):
        run_jsonl_jobs([{"id": 1}, {"id": 1}], lambda it: it["id"], lambda it: {}, str(tmp_path / "y.jsonl"))


def test_image_data_url(tmp_path):
    img = Image.new("RGB", (4, 3), (255, 0, 0))
    img.save(tmp_path / "a.png")
    url = image_data_url(str(tmp_path / "a.png"))
    assert url.startswith("data:image/png;base64,")
    img.save(tmp_path / "a.jpg")
    assert image_data_url(str(tmp_path / "a.jpg")).startswith("data:image/jpeg;base64,")
    assert image_data_url(img) == url  # PIL images are PNG-encoded
    (tmp_path / "b.png").write_bytes(b"hello")
    with pytest.raises(ValueError, match="b.png: not a PNG"):
        image_data_url(str(tmp_path / "b.png"))
    with pytest.raises(ValueError, match="cannot read image .*missing.png"):
        image_data_url(str(tmp_path / "missing.png"))
