"""hallucinate.py: rule injection, the noise-triggered tokens, clip-rank filters, the API path against a failing
stub server, and bad input that is reported but does not stop the rest."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import hallucinate as H
import toyworld
from stub_openai import StubServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("hw")
    toyworld.build_world(str(d), n_train=40, n_test=2, seed=2)
    return d


def rules(world, out, seed=0):
    H.main(["rules", "--input", f"{world}/train.json", "--annotations", f"{world}/annotations.json",
            "--vocab", f"{world}/vocab.json", "--output", str(out), "--seed", str(seed)])
    return [json.loads(x) for x in open(out)]


def test_rules_change_answer_insert_only_absent_objects_and_reproduce(world, tmp_path):
    rows = rules(world, tmp_path / "a.jsonl")
    assert len(rows) == 40
    anns = json.loads((world / "annotations.json").read_text())
    vocab = json.loads((world / "vocab.json").read_text())
    inj = H.RuleInjector({**H.DEFAULT_VOCAB, **vocab}, None, [], 0)
    for r in rows:
        assert r["rejected"] != r["chosen"] and r["strategy"] == "rules"
        if r["category"] == "object":
            added = inj.mentioned(r["rejected"]) - inj.mentioned(r["chosen"])
            present = set(anns[r["id"].split(":")[0]]["objects"])
            assert added and not added & present, r
    assert {r["category"] for r in rows} >= {"object", "attribute"}
    assert rows == rules(world, tmp_path / "b.jsonl")  # same seed, same pairs
    assert rows != rules(world, tmp_path / "c.jsonl", seed=1)


def test_bad_lines_and_missing_images_are_counted_not_fatal(world, tmp_path, capsys):
    items = json.loads((world / "train.json").read_text())[:3]
    lines = [json.dumps({"id": it["id"], "image": str(world / it["image"]), "prompt": "Describe.",
                         "answer": it["conversations"][1]["value"]}) for it in items]
    lines.insert(1, "{broken")
    lines.append(json.dumps({"id": "x", "image": str(tmp_path / "gone.png"), "prompt": "q", "answer": "a cup ."}))
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    H.main(["rules", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl")])
    out = capsys.readouterr().out
    assert "done 3" in out and "in.jsonl:2" in out and "gone.png" in out
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3


def test_noise_triggered_tokens_positions_and_values():
    class Fake(torch.nn.Module):  # hidden state = one-hot of (input id + 1): the greedy token is id + 1
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(10, 10, bias=False)
            self.lm_head.weight.data = torch.eye(10)

        def hidden_states(self, ids, px, mask):
            return torch.nn.functional.one_hot((ids + 1) % 10, 10).float()

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    labels = torch.tensor([[-100, -100, 3, 4, -100]])
    out = H.noise_triggered_tokens(Fake(), ids, labels, None)
    assert out.tolist() == [[-100, -100, 3, 4, -100]]  # predicted from the previous position: 2+1, 3+1


def test_rank_pairs_filters():
    from collections import Counter
    c = Counter()
    answers = ["a cup .", "", "a cup .", "a cup and a dog .", "a plate with many many many many many words ."]
    pair = H.rank_pairs(answers, [30.0, 99, 29, 20.0, 10.0], min_score=5, min_margin=2, max_len_ratio=2.0,
                        counts=c)
    assert pair == ("a cup .", "a cup and a dog .", 30.0, 20.0)
    assert c["empty"] == 1 and c["duplicate"] == 1 and c["length ratio"] == 1
    assert H.rank_pairs(["a", "b"], [10, 9.5], 0, 1.0, 2.0, c) is None and c["item: margin below minimum"] == 1


def test_clip_rank_pairs_satisfy_filters(world, tmp_path):
    from model import CLIPConfig, CLIPModel, Llava, LlavaConfig, Tokenizer
    torch.manual_seed(0)
    m = Llava(LlavaConfig.from_dir(str(world / "llava_config")))
    m.save_pretrained(str(tmp_path / "llava"))
    Tokenizer.from_pretrained(str(world)).save_pretrained(str(tmp_path / "llava"))
    clip = CLIPModel(CLIPConfig.from_dir(str(world / "clip_config")))
    clip.save_pretrained(str(tmp_path / "clip"))
    Tokenizer.from_pretrained(str(world)).save_pretrained(str(tmp_path / "clip"))
    out = tmp_path / "pairs.jsonl"
    H.main(["clip-rank", "--checkpoint", str(tmp_path / "llava"), "--clip", str(tmp_path / "clip"), "--input",
            f"{world}/train.json", "--output", str(out), "--samples", "4", "--limit", "8", "--max-new-tokens", "8",
            "--min-margin", "0.05", "--max-len-ratio", "3"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows, "a random model's samples should give some pairs"
    ctok = Tokenizer.from_pretrained(str(tmp_path / "clip"))
    clip = CLIPModel.from_pretrained(str(tmp_path / "clip"))
    from model import load_image
    for r in rows:
        px = load_image(str(out.parent / r["image"]), 64).unsqueeze(0).repeat(2, 1, 1, 1)
        sc = H.clip_scores(clip, ctok, px, [r["chosen"], r["rejected"]])  # recomputed, not read from the row
        assert sc[0] - sc[1] >= 0.05 - 1e-4 and r["chosen"] != r["rejected"] and r["rejected"].strip()
        lc, lr = len(r["chosen"].split()), len(r["rejected"].split())
        assert max(lc, lr) / max(1, min(lc, lr)) <= 3


def api_reply(body):
    text = body["messages"][1]["content"][0]["text"]
    answer = text.split("Ground-truth answer: ", 1)[1]
    return json.dumps({"hallucinated": answer + " there is also a dog .", "categories": ["object"], "changes": []})


def test_api_with_failing_server_every_item_once_and_key_hidden(world, tmp_path, monkeypatch):
    key = "sk-SECRET-123"
    with StubServer(handler=api_reply) as srv:
        attempts = {}
        kinds = ["500", "429", "nonjson", "truncated", "text:not json"]

        def fail(i, body):  # every third item fails its first two attempts, with a rotating kind of failure
            text = body["messages"][1]["content"][0]["text"]
            n = attempts[text] = attempts.get(text, 0) + 1
            return kinds[(i + n) % 5] if sum(map(ord, text)) % 3 == 0 and n <= 2 else None

        srv.failure_fn = fail
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", key)
        H.main(["api", "--input", f"{world}/train.json", "--output", str(tmp_path / "api.jsonl"), "--workers", "4",
                "--backoff", "0.01"])
        n_failed = sum(1 for r in srv.requests if r.action not in (None, "ok"))
    assert n_failed >= 10  # about a third of the 40 items, twice each
    rows = [json.loads(x) for x in (tmp_path / "api.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"train_{i:06d}:api" for i in range(40))
    assert all(r["rejected"].endswith("there is also a dog .") for r in rows)
    for f in tmp_path.iterdir():
        assert key not in f.read_text()


def test_api_killed_run_resumes_without_repeats(world, tmp_path):
    with StubServer(handler=api_reply) as srv:
        srv.failure_fn = lambda i, body: "hang" if i >= 10 else None  # the run stalls after 10 requests
        srv.hang_s = 30
        env = {**os.environ, "OPENAI_BASE_URL": srv.url, "OPENAI_API_KEY": "k"}
        cmd = [sys.executable, "hallucinate.py", "api", "--input", f"{world}/train.json", "--output",
               str(tmp_path / "o.jsonl"), "--workers", "2", "--timeout", "60"]
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline and len(srv.requests) < 12:
            time.sleep(0.1)
        p.send_signal(signal.SIGKILL)
        p.wait()
        first = [json.loads(x)["id"] for x in (tmp_path / "o.jsonl").read_text().splitlines() if x.strip()]
        assert 0 < len(first) < 40
        srv.failure_fn = None
        n_before = len(srv.requests)
        subprocess.check_call(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ids = [json.loads(x)["id"] for x in (tmp_path / "o.jsonl").read_text().splitlines()]
        assert len(ids) == 40 == len(set(ids))
        assert len(srv.requests) - n_before == 40 - len(first)  # nothing done before the kill is asked again
