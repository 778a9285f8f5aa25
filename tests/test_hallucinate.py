"""hallucinate.py + hallucinate_rules.py: rule injection on the toy world and on free text, the noise-triggered tokens, noise
and clip-rank on a tiny random LLaVA + CLIP built here, the API path against a failing stub server (retries,
Retry-After, per-item failures, kill and resume, key never written), and bad input that is reported, not fatal."""
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import torch

import hallucinate as H
import hallucinate_clip as HC
import hallucinate_data as HD
from toy import world as toyworld
from hallucinate_rules import Cooccurrence, RuleInjector, Vocab
from rehearsal.stub_openai import StubServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 30  # training images of the test world


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("hw")
    toyworld.build_world(str(d), n_train=N, n_test=2, seed=2)
    return d


def read_rows(path):
    return [json.loads(x) for x in open(path, encoding="utf-8").read().splitlines()]


# ------------------------------------------------------------------------------------------- rules
def run_rules(world, out, seed=0, *extra):
    rc = H.main(["rules", "--input", f"{world}/train.json", "--annotations", f"{world}/annotations.json",
                 "--vocab", f"{world}/vocab.json", "--output", str(out), "--seed", str(seed), *extra])
    assert rc == 0
    return read_rows(out)


def test_rules_change_answer_insert_only_absent_objects_and_reproduce(world, tmp_path):
    rows = run_rules(world, tmp_path / "a.jsonl")
    assert len(rows) == N
    anns = json.loads((world / "annotations.json").read_text())
    vocab = Vocab(json.loads((world / "vocab.json").read_text()))
    words = json.loads((world / "tokenizer.json").read_text())["model"]["vocab"]
    for r in rows:
        assert r["rejected"] != r["chosen"] and r["strategy"] == "rules" and (world / r["image"]).exists()
        assert r["id"].endswith(":rules") and r["prompt"].startswith("<image>")
        present = set(anns[r["id"].split(":")[0]]["objects"])
        added = vocab.mentioned(r["rejected"]) - vocab.mentioned(r["chosen"])
        if r["category"] == "object":
            assert added and not added & present, r
            new = added.pop()
            if r["edit"].startswith("inserted"):  # every object said before is still said
                assert r["edit"] == f"inserted {new}" and vocab.mentioned(r["chosen"]) <= vocab.mentioned(r["rejected"])
            else:  # a swap: one present object renamed everywhere, nothing else lost
                old = vocab.mentioned(r["chosen"]) - vocab.mentioned(r["rejected"])
                assert r["edit"] == f"{old.pop()} -> {new}" and not old, r
                assert len(vocab.mentions(r["rejected"])) == len(vocab.mentions(r["chosen"])), r  # as many objects
        else:
            assert not added, r  # only the object rule may add an object
        # the edit stays inside the world's language: every word is known to its word-level tokenizer
        assert all(w in words for w in r["rejected"].split()), r["rejected"]
    assert {r["category"] for r in rows} >= {"object", "attribute", "count"}
    assert {r["edit"].startswith("inserted") for r in rows if r["category"] == "object"} == {True, False}
    assert rows == run_rules(world, tmp_path / "b.jsonl")  # same seed: same pairs
    other = run_rules(world, tmp_path / "c.jsonl", 1)
    assert rows != other and len(other) == N


def test_rules_one_category_and_all_turns(world, tmp_path):
    rows = run_rules(world, tmp_path / "o.jsonl", 0, "--mix", "object=1", "--all-turns")
    turns = sum(len(x["conversations"]) // 2 for x in json.loads((world / "train.json").read_text()))
    assert len(rows) == turns and len({r["id"] for r in rows}) == turns
    anns = json.loads((world / "annotations.json").read_text())
    for r in rows:
        present = set(anns[r["id"].split(":")[0].split("#")[0]]["objects"])
        if r["chosen"] == "No.":  # "Is there a <absent object>?" answered "Yes.": an object hallucination
            assert r["rejected"] == "Yes." and r["category"] == "object"
        elif "#" not in r["id"]:
            assert r["category"] == "object" and r["edit"].split()[-1] not in present
    # each image counts once in the co-occurrence statistics however many turns it has: the caption pairs are the
    # ones a caption-only run makes
    captions_only = run_rules(world, tmp_path / "c.jsonl", 0, "--mix", "object=1")
    assert [r for r in rows if "#" not in r["id"]] == captions_only


def test_rules_relation_only_swaps_every_stated_relation(world, tmp_path):
    rows = run_rules(world, tmp_path / "r.jsonl", 0, "--mix", "relation=1")
    captions = [x["conversations"][1]["value"] for x in json.loads((world / "train.json").read_text())]
    with_rel = [c for c in captions if " left of " in c or " right of " in c]
    assert len(rows) == len(with_rel) > 0  # the others have nothing to swap and are counted as skipped
    for r in rows:
        flip = {"left": "right", "right": "left"}
        assert r["category"] == "relation" and r["rejected"] == re.sub(
            r"\b(left|right) of\b", lambda m: f"{flip[m.group(1)]} of", r["chosen"])


def test_cooccurrence_decides_the_inserted_object():
    cooc = Cooccurrence([{"plate", "fork"}, {"plate", "fork"}, {"plate", "fork", "cup"}, {"car", "dog"}])
    assert cooc.weights({"plate"}, ["fork", "cup", "dog"]) == [3.0, 1.0, 0.0]  # C[plate, c]
    assert cooc.weights({"bench"}, ["fork", "dog"]) == [3.0, 1.0]  # nothing co-occurs: overall frequency
    assert cooc.weights({"bench"}, ["kite"]) == [1.0]  # unseen: uniform
    import random
    rng = random.Random(0)
    draws = Counter(cooc.sample_absent({"plate"}, ["fork", "cup", "dog"], rng) for _ in range(400))
    assert draws["dog"] == 0 and draws["fork"] > 2 * draws["cup"] > 0  # 3 : 1 : 0
    inj = RuleInjector(Vocab(), cooc, seed=0, mix={"object": 1})
    e = inj.inject("A plate on a table.", {"plate", "table"}, "k")
    assert e.category == "object" and e.detail in ("inserted fork", "inserted cup")


def test_rules_record_objects_and_list_annotations(world, tmp_path):
    img = str(next((world / "images").iterdir()))
    recs = [{"id": "a", "image": img, "prompt": "Describe.", "answer": "A brown dog sleeps on a bench.",
             "objects": [{"name": "dog", "color": "brown"}, {"name": "bench"}, {"name": "person"}]},
            {"id": "b", "image": img, "prompt": "Describe.", "answer": "A dog and a person near a car."},
            {"id": "c", "image": img, "prompt": "Describe.", "answer": "A cat."}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "ann.json").write_text(json.dumps([{"id": "c", "objects": ["cat", "bench", "person", "dog"]}]))
    H.main(["rules", "--input", str(tmp_path / "in.jsonl"), "--annotations", str(tmp_path / "ann.json"),
            "--output", str(tmp_path / "o.jsonl"), "--mix", "object=1", "--seed", "4"])
    rows = {r["id"]: r for r in read_rows(tmp_path / "o.jsonl")}
    v = Vocab()
    added = v.mentioned(rows["a:rules"]["rejected"]) - v.mentioned(rows["a:rules"]["chosen"])
    assert added and not added & {"dog", "bench", "person"}  # the record's objects count as present
    # a dog / person / bench co-occur in the data: "c" (a cat, annotated with all three) gets none of them
    added = v.mentioned(rows["c:rules"]["rejected"]) - {"cat"}
    assert added and not added & {"bench", "person", "dog"}
    (tmp_path / "ann2.json").write_text(json.dumps([{"objects": ["cat"]}]))
    with pytest.raises(ValueError, match="item 0 has no 'id'"):
        H.main(["rules", "--input", str(tmp_path / "in.jsonl"), "--annotations", str(tmp_path / "ann2.json"),
                "--output", str(tmp_path / "p.jsonl")])


@pytest.mark.parametrize("text,kind,expect", [
    ("A small dog sits on top of a large couch.", "relation", "A small dog sits under a large couch."),
    ("There are three dogs behind the fence.", "relation", "There are three dogs in front of the fence."),
    ("The kitchen has two cups on the table.", "count", None),
    ("He holds an orange umbrella.", "attribute", None),
    ("A man is riding a bike next to a red car.", "object", None),
    ("The cup is red.", "attribute", None),
])
def test_rule_kinds_on_free_text(text, kind, expect):
    v = Vocab()
    e = RuleInjector(v, Cooccurrence([{"dog", "person", "cat"}]), seed=3, mix={kind: 1}).inject(
        text, v.mentioned(text), "key")
    assert e is not None and e.text != text and e.category == kind
    if expect:
        assert e.text == expect
    if kind == "count":
        assert e.text in ("The kitchen has three cups on the table.", "The kitchen has four cups on the table.",
                          "The kitchen has five cups on the table.")
    if text.startswith("He holds"):  # the article follows the new colour: "an orange" -> "a red", never "an red"
        new = e.detail.split(" -> ")[1]
        assert e.text == f"He holds {'an' if new[0] in 'aeiou' else 'a'} {new} umbrella."
    if kind == "object":
        assert e.text.startswith(text + " There is also a ") and e.text.endswith(" next to the man.")
    short = RuleInjector(v, Cooccurrence([]), 0).inject("No.", set(), "k")
    assert (short.text, short.category) == ("Yes.", "object")
    plural = RuleInjector(v, Cooccurrence([]), 0, {"count": 1}).inject("She sees a small bench.", {"bench"}, "k")
    assert plural.text.endswith(" small benches.")  # "a small bench" -> "<n> small benches"


def test_attribute_added_against_the_true_colour():
    v = Vocab()
    for seed in range(6):
        e = RuleInjector(v, Cooccurrence([]), seed, {"attribute": 1}).inject(
            "A dog sleeps on a bench.", {"dog", "bench"}, "k", [{"name": "dog", "color": "brown"}])
        colour = e.text.split()[1]
        assert e.text == f"{'An' if colour[0] in 'aeiou' else 'A'} {colour} dog sleeps on a bench."
        assert colour in v.colors and colour != "brown" and e.category == "attribute"



def test_omission_drops_one_present_object_and_its_sentences():
    v = Vocab()
    text = "a table scene with a red cup , a small white plate and two forks . the cup is left of the plate ."
    seen = {}
    for seed in range(12):
        e = RuleInjector(v, Cooccurrence([]), seed, {"omit": 1}).inject(text, {"cup", "plate", "fork"}, "k")
        assert e.category == "omission"
        seen[e.detail] = e.text
    assert seen == {  # each object once, its relation sentence gone with it; the others' sentences stay
        "omitted cup": "a table scene with a small white plate and two forks .",
        "omitted plate": "a table scene with a red cup and two forks .",
        "omitted fork": "a table scene with a red cup and a small white plate . the cup is left of the plate ."}
    free = RuleInjector(v, Cooccurrence([]), 1, {"omit": 1}).inject(
        "A table with a cup, a plate and a fork. The fork is on the plate. Nice.", {"fork"}, "k")
    assert free.text == "A table with a cup and a plate. Nice."  # only a present object is left out
    lone = RuleInjector(v, Cooccurrence([]), 0, {"omit": 1})
    assert lone.inject("a table scene with a plate .", {"plate"}, "k") is None  # nothing would be left to list
    with pytest.raises(ValueError, match="mix must give"):
        RuleInjector(v, Cooccurrence([]), 0, {"drop": 1})

# ------------------------------------------------------------------------------------------- bad input
def test_bad_lines_and_missing_images_are_counted_not_fatal(world, tmp_path, capsys):
    items = json.loads((world / "train.json").read_text())[:3]
    lines = [json.dumps({"id": it["id"], "image": str(world / it["image"]), "prompt": "Describe.",
                         "answer": it["conversations"][1]["value"]}) for it in items]
    lines.insert(1, "{broken")  # line 2
    lines.append(json.dumps({"id": "x", "image": str(tmp_path / "gone.png"), "prompt": "q", "answer": "a cup ."}))
    lines.append(json.dumps({"id": "y", "image": str(world / items[0]["image"]), "prompt": "q"}))  # no answer
    lines.append(lines[0])  # the same id again
    lines.append("[1, 2")  # line 8
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    assert H.main(["rules", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "done 3, skipped 5" in out and "in.jsonl:2" in out and "in.jsonl:8" in out
    assert str(tmp_path / "gone.png") in out and "no prompt or answer" in out and "duplicate id" in out
    assert len(read_rows(tmp_path / "o.jsonl")) == 3
    (tmp_path / "bad.json").write_text('[{"id": 1},\n {"id": 2,,}]')
    with pytest.raises(ValueError, match=r"bad.json:2:"):  # a JSON list must parse as a whole
        H.main(["rules", "--input", str(tmp_path / "bad.json"), "--output", str(tmp_path / "p.jsonl")])


# ------------------------------------------------------------------------------------------- tiny models
def word_tokenizer(texts, path):
    """A word-level tokenizer over the given texts (the toy world's builder), saved as <path>/tokenizer.json."""
    os.makedirs(path, exist_ok=True)
    return toyworld.build_tokenizer(texts, os.path.join(path, "tokenizer.json")).get_vocab_size()


@pytest.fixture(scope="module")
def tiny(world, tmp_path_factory):
    """(llava dir, clip dir): random 1-layer models with 32-px images and a word-level tokenizer."""
    from model import CLIPConfig, CLIPModel, Llava, LlavaConfig
    from model.config import CLIPTextConfig, TextConfig, VisionConfig
    d = tmp_path_factory.mktemp("tiny")
    texts = [t["value"] for x in json.loads((world / "train.json").read_text()) for t in x["conversations"]]
    V = word_tokenizer(texts + ["USER: ASSISTANT:"], str(d / "llava"))
    word_tokenizer(texts + ["USER: ASSISTANT:"], str(d / "clip"))
    vis = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8, projection_dim=16)
    torch.manual_seed(0)
    Llava(LlavaConfig(vision=vis, text=TextConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=3),
        image_token_id=4, pad_token_id=3)).save_pretrained(str(d / "llava"))
    CLIPModel(CLIPConfig(vision=vis, text=CLIPTextConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=24, pad_token_id=3, bos_token_id=1, eos_token_id=2, projection_dim=16),
        projection_dim=16)).save_pretrained(str(d / "clip"))
    return d / "llava", d / "clip"


def test_noise_triggered_tokens_positions_and_values():
    class Fake(torch.nn.Module):  # hidden state = one-hot of (input id + 1): the greedy token is id + 1
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(10, 10, bias=False)
            self.lm_head.weight.data = torch.eye(10)

        def hidden_states(self, ids, px, mask, feats=None):
            return torch.nn.functional.one_hot((ids + 1) % 10, 10).float()

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    labels = torch.tensor([[-100, -100, 3, 4, -100]])
    out = H.noise_triggered_tokens(Fake(), ids, labels, None)
    assert out.tolist() == [[-100, -100, 3, 4, -100]]  # predicted from the previous position: 2+1, 3+1


def test_noise_triggered_tokens_match_noisy_forward_argmax(world, tiny):
    from model import Llava, Tokenizer, load_image
    from model.image import open_image
    from model.tokenizer import pad_sequences
    from noise import NoiseSchedule, noise_image
    m, tok = Llava.from_pretrained(str(tiny[0])), Tokenizer.from_pretrained(str(tiny[0]))
    rows = json.loads((world / "train.json").read_text())[:2]
    pairs = [tok.encode_pair(r["conversations"][0]["value"], r["conversations"][1]["value"], 16, "llava_hf")
             for r in rows]
    ids, mask, labels = pad_sequences([p[0] for p in pairs], tok.pad_id, "left", [p[1] for p in pairs])
    s, g = NoiseSchedule("sigmoid"), torch.Generator().manual_seed(0)
    noisy = torch.stack([load_image(noise_image(open_image(str(world / r["image"])), 500, s, g), 32) for r in rows])
    out = H.noise_triggered_tokens(m, ids, labels, noisy, mask)
    with torch.no_grad():
        ref = m(ids, noisy, mask).argmax(-1)  # (B, T): full logits, the slow way
    scored = labels != -100
    assert torch.equal(out[scored], ref[:, :-1][scored[:, 1:]]) and bool((out[~scored] == -100).all())


def test_noise_cli_writes_noisy_generations(world, tiny, tmp_path, capsys):
    args = ["noise", "--checkpoint", str(tiny[0]), "--input", f"{world}/train.json", "--t", "500",
            "--max-new-tokens", "6", "--batch-size", "8", "--seed", "1"]
    assert H.main(args + ["--output", str(tmp_path / "n1.jsonl")]) == 0
    rows = read_rows(tmp_path / "n1.jsonl")
    summary = capsys.readouterr().out
    assert f"done {len(rows)}," in summary and len(rows) > N // 2
    train = {x["id"]: x for x in json.loads((world / "train.json").read_text())}
    for r in rows:
        gt = train[r["id"].split(":")[0]]["conversations"][1]["value"]
        assert r["chosen"] == gt and r["rejected"].strip() and r["rejected"] != gt
        assert (r["strategy"], r["category"], r["t"]) == ("noise", "noise", 500)
        assert (tmp_path / r["image"]).exists()
    assert H.main(args + ["--output", str(tmp_path / "n2.jsonl")]) == 0
    assert read_rows(tmp_path / "n2.jsonl") == rows  # same seed: same noise, same greedy answers


def test_noise_resumes_a_killed_run_byte_for_byte(world, tiny, tmp_path, monkeypatch):
    """Killed after its first batch of 8, rerun with --batch-size 5: only the 22 images left are answered, and the
    file equals an uninterrupted run's (each image's noise is seeded from (seed, item id), not drawn in turn)."""
    args = ["noise", "--checkpoint", str(tiny[0]), "--input", f"{world}/train.json", "--max-new-tokens", "4"]
    assert H.main(args + ["--output", str(tmp_path / "full.jsonl"), "--batch-size", "8"]) == 0
    calls = kill_after(monkeypatch, "generate_answers", 1)
    with pytest.raises(KeyboardInterrupt):
        H.main(args + ["--output", str(tmp_path / "part.jsonl"), "--batch-size", "8"])
    assert calls == [8] and not (tmp_path / "part.jsonl").exists()
    calls.clear()
    assert H.main(args + ["--output", str(tmp_path / "part.jsonl"), "--batch-size", "5"]) == 0
    assert calls == [5, 5, 5, 5, 2]
    full = (tmp_path / "full.jsonl").read_bytes()
    assert full and (tmp_path / "part.jsonl").read_bytes() == full and not (tmp_path / "part.jsonl.parts").exists()


# ------------------------------------------------------------------------------------------- clip-rank
def test_rank_pairs_filters():
    c = Counter()
    answers = ["a cup .", "", "a cup .", "a cup and a dog .", "a plate with many many many many many words ."]
    pair = HC.rank_pairs(answers, [30.0, 99, 29, 20.0, 10.0], min_score=5, min_margin=2, max_len_ratio=2.0,
                        counts=c)
    assert pair == ("a cup .", "a cup and a dog .", 30.0, 20.0)
    assert c == {"empty": 1, "duplicate": 1, "length ratio": 1}
    assert HC.rank_pairs(["a", "b"], [10, 9.5], 0, 1.0, 2.0, c) is None and c["item: margin below minimum"] == 1
    assert HC.rank_pairs(["a", "b"], [10, 5], 11, 1.0, 2.0, c) is None and c["item: best below min score"] == 1


def test_clip_text_ids_and_sentence_average(tiny):
    import torch.nn.functional as F
    from model import CLIPModel, Tokenizer
    clip, ctok = CLIPModel.from_pretrained(str(tiny[1])), Tokenizer.from_pretrained(str(tiny[1]))
    cfg = clip.config.text
    ids = HC.clip_text_ids(cfg, ctok, " ".join(["the cup"] * 40))
    assert len(ids) == cfg.max_position_embeddings and ids[0] == cfg.bos_token_id and ids[-1] == cfg.eos_token_id
    img = F.normalize(clip.encode_image(torch.randn(1, 3, 32, 32)), dim=-1).detach()
    a, b = "a red cup .", "the fork is left of the plate ."
    s = HC.clip_scores(clip, ctok, img.repeat(3, 1), [a, b, f"{a} {b}"])
    assert s[2].item() == pytest.approx((s[0].item() + s[1].item()) / 2, abs=1e-4)  # mean over sentences
    assert HC.clip_scores(clip, ctok, img, [" . "])[0].item() == float("-inf")
    # phrases: a listing is cut into its object phrases; min pooling keeps the worst-supported one
    assert HC.split_phrases("a scene with a cup , a red fork and a plate . the cup is left of the plate .") == [
        "a scene with a cup", "a red fork", "a plate .", "the cup is left of the plate ."]
    units = ["a scene with a cup", "a red fork", "a plate ."]
    one = HC.clip_scores(clip, ctok, img.repeat(3, 1), units)
    for pool, want in (("min", one.min()), ("mean", one.mean())):
        got = HC.clip_scores(clip, ctok, img, ["a scene with a cup , a red fork and a plate ."], "phrase", pool)
        assert got.item() == pytest.approx(want.item(), abs=1e-4), pool


def test_clip_rank_pairs_satisfy_filters(world, tiny, tmp_path, capsys):
    from model import CLIPModel, Tokenizer, load_image
    out = tmp_path / "pairs.jsonl"
    margin, ratio = 0.5, 1.5
    assert H.main(["clip-rank", "--checkpoint", str(tiny[0]), "--clip", str(tiny[1]), "--input",
                   f"{world}/train.json", "--output", str(out), "--samples", "4", "--limit", "12",
                   "--max-new-tokens", "6", "--min-margin", str(margin), "--max-len-ratio", str(ratio),
                   "--batch-size", "6"]) == 0
    printed = capsys.readouterr().out
    rows = read_rows(out)
    assert rows, "a random model's samples should give some pairs"
    assert "filters removed:" in printed and f"done {len(rows)}," in printed
    ctok, clip = Tokenizer.from_pretrained(str(tiny[1])), CLIPModel.from_pretrained(str(tiny[1]))
    for r in rows:
        px = load_image(str(out.parent / r["image"]), 32).unsqueeze(0)
        img = torch.nn.functional.normalize(clip.encode_image(px), dim=-1).detach().repeat(2, 1)
        sc = HC.clip_scores(clip, ctok, img, [r["chosen"], r["rejected"]])  # recomputed, not read from the row
        assert sc[0] - sc[1] >= margin - 1e-3 and sc[0] == max(sc)
        assert r["chosen"] != r["rejected"] and r["rejected"].strip() and r["chosen"].strip()
        lc, lr = len(r["chosen"].split()), len(r["rejected"].split())
        assert max(lc, lr) / min(lc, lr) <= ratio
        assert (r["strategy"], r["category"]) == ("clip-rank", "clip")


CLIP_ARGS = ["--samples", "3", "--max-new-tokens", "5", "--min-margin", "0.1", "--max-len-ratio", "3",
             "--batch-size", "4", "--limit", "12"]


def clip_rank(tiny, inp, out, *extra):
    return H.main(["clip-rank", "--checkpoint", str(tiny[0]), "--clip", str(tiny[1]), "--input", str(inp),
                   "--output", str(out), *CLIP_ARGS, *extra])


def kill_after(monkeypatch, name, n_calls):
    """Make H.<name> raise KeyboardInterrupt (a kill between batches) once, on call n_calls + 1; returns the log of
    the batch sizes it was called with (the kill's call not included)."""
    real, calls, fired = getattr(H, name), [], []

    def dies(*a, **k):
        if len(calls) == n_calls and not fired:
            fired.append(1)
            raise KeyboardInterrupt
        calls.append(len(next(x for x in a if isinstance(x, list))))  # the batch's items
        return real(*a, **k)
    monkeypatch.setattr(H, name, dies)
    return calls


def test_clip_rank_resumes_a_killed_run_by_item_byte_for_byte(world, tiny, tmp_path, monkeypatch, capsys):
    """A run killed after its first batch of 4 images, resumed with --batch-size 3 (a batch index would point
    elsewhere now), writes the file an uninterrupted run writes, byte for byte; the resume samples only the 8
    images left; the summary accounts for every input item; the parts are removed."""
    assert clip_rank(tiny, f"{world}/train.json", tmp_path / "full.jsonl") == 0
    full_summary = capsys.readouterr().out
    calls = kill_after(monkeypatch, "rank_batch", 1)
    with pytest.raises(KeyboardInterrupt):
        clip_rank(tiny, f"{world}/train.json", tmp_path / "part.jsonl")
    assert not (tmp_path / "part.jsonl").exists()  # nothing half-written where the pairs go
    calls.clear()
    assert clip_rank(tiny, f"{world}/train.json", tmp_path / "part.jsonl", "--batch-size", "3") == 0
    assert calls == [3, 3, 2]  # the 8 images the killed run had not finished
    full = (tmp_path / "full.jsonl").read_bytes()
    assert full and (tmp_path / "part.jsonl").read_bytes() == full
    assert not (tmp_path / "part.jsonl.parts").exists() and not (tmp_path / "full.jsonl.parts").exists()
    summary = capsys.readouterr().out
    done, skipped, failed = map(int, re.search(r"done (\d+), skipped (\d+), failed (\d+)", summary).groups())
    assert done == len(full.splitlines()) and done + skipped == N and failed == 0  # every input item counted
    assert f"skipped {N - 12} x beyond --limit 12" in summary and "no pair passed the filters" in summary
    assert summary.split("-> ")[1].split("\n", 1)[1] == full_summary.split("-> ")[1].split("\n", 1)[1]


def test_clip_rank_under_torchrun_two_ranks_gives_the_one_process_pairs(world, tiny, tmp_path):
    assert clip_rank(tiny, f"{world}/train.json", tmp_path / "one.jsonl") == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "hallucinate.py",
           "clip-rank", "--checkpoint", str(tiny[0]), "--clip", str(tiny[1]), "--input", f"{world}/train.json",
           "--output", str(tmp_path / "two.jsonl"), "--device", "cpu", *CLIP_ARGS]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    one, two = read_rows(tmp_path / "one.jsonl"), read_rows(tmp_path / "two.jsonl")
    assert one and [(x["id"], x["chosen"], x["rejected"]) for x in two] == \
        [(x["id"], x["chosen"], x["rejected"]) for x in one]
    assert "rank 0: 6/6 items" in r.stdout and not (tmp_path / "two.jsonl.parts").exists()  # half each


def test_clip_rank_reads_coco_captions_and_llava_mix_with_image_root(world, tiny, tmp_path, capsys):
    """COCO's captions_train2014.json layout (images + annotations) and LLaVA's instruction mix (text-only records
    counted as such) as prompt pools, bare file names resolved against --image-root."""
    train = json.loads((world / "train.json").read_text())[:6]
    names = [os.path.basename(t["image"]) for t in train]
    coco = {"info": {}, "licenses": [], "images": [{"id": 10 + i, "file_name": n, "height": 32, "width": 32}
                                                   for i, n in enumerate(names)],
            "annotations": [{"id": 100 + i, "image_id": 10 + i, "caption": "A scene."} for i in range(6)]}
    (tmp_path / "captions_train2014.json").write_text(json.dumps(coco))
    img_dir = os.path.dirname(os.path.join(str(world), train[0]["image"]))
    items = HD.read_items(str(tmp_path / "captions_train2014.json"), HD.Summary(), need_answer=False,
                         image_root=img_dir)
    assert [it["id"] for it in items] == [str(10 + i) for i in range(6)]
    assert [it["prompt"] for it in items[:5]] == list(HD.CAPTION_PROMPTS) and items[5]["prompt"] == HD.CAPTION_PROMPTS[0]
    mix = [{"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    mix += [{"id": f"m{i}", "image": n, "conversations": t["conversations"]} for i, (n, t) in enumerate(zip(names,
                                                                                                           train))]
    (tmp_path / "mix.json").write_text(json.dumps(mix))
    s = HD.Summary()
    assert len(HD.read_items(str(tmp_path / "mix.json"), s, image_root=img_dir)) == 6 and s.skipped["no image"] == 1
    assert clip_rank(tiny, tmp_path / "captions_train2014.json", tmp_path / "c.jsonl", "--image-root", img_dir) == 0
    assert "done" in capsys.readouterr().out
    bad = dict(coco, images=coco["images"] + [{"id": 99}])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad.json: images\[6\]: needs 'id' and a 'file_name'"):
        HD.read_items(str(tmp_path / "bad.json"), HD.Summary(), need_answer=False)


def test_generation_is_split_to_fit_the_kv_cache_budget(world, tiny, monkeypatch):
    """A budget that holds two prompts' cache: five prompts go to the model as 2 + 2 + 1, and every answer is the
    one the unbounded call gives (each answer samples from its own generator)."""
    from model import Llava, Tokenizer
    from model.generate import row_generators
    from model.llama import KVCache
    model, tok = Llava.from_pretrained(str(tiny[0])), Tokenizer.from_pretrained(str(tiny[0]))
    items = HD.read_items(f"{world}/train.json", HD.Summary())[:5]
    _, px, _ = H.pixels_for(items, 32, True)
    prompts = [it["prompt"] for it in items]
    T = max(len(tok.encode_prompt(p, 16, template="vicuna_v1")) for p in prompts)
    c = model.config.text
    two = KVCache.nbytes(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, torch.float32, 2, T, 3, 6)

    def answers(cache_gb):
        return H.generate_answers(model, tok, prompts, px, "vicuna_v1", 6, 1.0, 0.9,
                                  row_generators(0, range(15)), samples=3, cache_gb=cache_gb)
    whole = answers(None)
    sizes, real = [], model.generate
    monkeypatch.setattr(model, "generate", lambda ids, *a, **k: sizes.append(len(ids)) or real(ids, *a, **k))
    assert answers(two / 2 ** 30) == whole and sizes == [2, 2, 1]


@pytest.mark.parametrize("cmd,flag,value,message", [
    ("clip-rank", "--batch-size", "0", "--batch-size 0: must be at least 1"),
    ("clip-rank", "--samples", "0", "--samples 0: must be at least 2"),
    ("clip-rank", "--limit", "-1", "--limit -1: must be 0 (every image) or a positive number"),
    ("clip-rank", "--max-new-tokens", "0", "--max-new-tokens 0: must be at least 1"),
    ("noise", "--batch-size", "-2", "--batch-size -2: must be at least 1"),
    ("noise", "--max-new-tokens", "-1", "--max-new-tokens -1: must be at least 1"),
    ("noise", "--t", "1000", "--t 1000: the noise step must be in [0, 1000)"),
])
def test_bad_values_are_refused_before_any_work(cmd, flag, value, message, tmp_path):
    args = [cmd, "--checkpoint", "nowhere", "--input", "nothing.json", "--output", str(tmp_path / "o.jsonl"),
            flag, value] + (["--clip", "nowhere"] if cmd == "clip-rank" else [])
    with pytest.raises(ValueError) as e:  # before reading the input or loading a model: neither exists
        H.main(args)
    assert str(e.value).startswith(message)


def test_bad_value_and_empty_input_exit_nonzero_with_one_line(world, tiny, tmp_path, capsys):
    """From the shell: a bad value is one line naming the flag, exit 1; an input whose every record is skipped
    writes nothing and exits 1 with the count."""
    r = subprocess.run([sys.executable, "hallucinate.py", "clip-rank", "--checkpoint", "x", "--clip", "y", "--input",
                        "z", "--output", str(tmp_path / "o.jsonl"), "--batch-size", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (1, "hallucinate.py: error: --batch-size 0: must be at least 1\n")
    (tmp_path / "gone.jsonl").write_text("".join(json.dumps({"id": f"g{i}", "image": f"gone{i}.png", "prompt": "Hi",
                                                             "answer": "a cup ."}) + "\n" for i in range(3)))
    for cmd in ("clip-rank", "noise"):
        assert (H.main([cmd, "--checkpoint", str(tiny[0]), "--input", str(tmp_path / "gone.jsonl"), "--output",
                        str(tmp_path / f"{cmd}.jsonl")] + (["--clip", str(tiny[1])] if cmd == "clip-rank" else []))
                == 1)
        assert (tmp_path / f"{cmd}.jsonl").read_text() == ""
    H.main(["rules", "--input", str(tmp_path / "gone.jsonl"), "--output", str(tmp_path / "r.jsonl")])
    assert re.search(r"skipped 3 x missing image: \S*gone.jsonl:1 \(id 'g0'\): \S*gone0.png, ", capsys.readouterr().out)
    (tmp_path / "empty.jsonl").write_text("\n")  # an empty input says so (it read as "done 0, skipped 0")
    for cmd in ("rules", "noise"):
        with pytest.raises(ValueError, match=r"empty.jsonl: it holds no records \(empty\)"):
            H.main([cmd, "--input", str(tmp_path / "empty.jsonl"), "--output", str(tmp_path / "e.jsonl")]
                   + (["--checkpoint", str(tiny[0])] if cmd == "noise" else []))


def test_recipe_sets_defaults_and_rejects_unknown_keys(world, tiny, tmp_path):
    (tmp_path / "r.toml").write_text('samples = 2\nmax-new-tokens = 4\nmin_margin = 0.1\nbatch_size = 4\n'
                                     'max_len_ratio = 3.0\nlimit = 4\n')
    out = tmp_path / "p.jsonl"
    assert H.main(["clip-rank", "--recipe", str(tmp_path / "r.toml"), "--checkpoint", str(tiny[0]), "--clip",
                   str(tiny[1]), "--input", f"{world}/train.json", "--output", str(out)]) == 0
    (tmp_path / "bad.toml").write_text("sample = 2\n")
    with pytest.raises(SystemExit, match=r"bad.toml: unknown key 'sample'"):
        H.main(["clip-rank", "--recipe", str(tmp_path / "bad.toml"), "--checkpoint", "x", "--clip", "y",
                "--input", "z", "--output", "w"])


# ------------------------------------------------------------------------------------------- api
def api_reply(body):
    text = body["messages"][1]["content"][0]["text"]
    answer = text.split("Correct answer: ", 1)[1].split("\n")[0]
    return json.dumps({"hallucinated": answer + " there is also a dog .",
                       "edits": [{"category": "object", "original": "", "changed": "a dog"}]})


def item_of(body):
    return body["messages"][1]["content"][0]["text"].split("Correct answer: ", 1)[1].split("\n")[0]


def test_parse_api_reply_validates():
    good = json.dumps({"hallucinated": "a red cup", "edits": [{"category": "attribute"}]})
    assert H.parse_api_reply(good, "a blue cup")[:2] == ("a red cup", "attribute")
    assert H.parse_api_reply(f"```json\n{good}\n```", "a blue cup")[0] == "a red cup"
    for bad, why in [("not json", "not JSON"), ("[1]", "not a JSON object"), ('{"edits": []}', "hallucinated"),
                     (json.dumps({"hallucinated": "a blue  cup", "edits": [{"category": "object"}]}), "equals"),
                     (json.dumps({"hallucinated": "a red cup", "edits": []}), "edits"),
                     (json.dumps({"hallucinated": "a red cup", "edits": [{"category": "mood"}]}), "unknown")]:
        with pytest.raises(ValueError, match=why):
            H.parse_api_reply(bad, "a blue cup")


def test_api_with_failing_server_every_item_once_and_key_hidden(world, tmp_path, monkeypatch, capsys, caplog):
    key = "sk-SECRET-123"
    seen, times, lock = {}, {}, threading.Lock()
    kinds = ["429", "500", "hang", "truncated", "nonjson", "text:not json at all", "noshape", "503"]

    def failure(i, body):  # half of the items fail their first attempt: a third of all requests fail
        k = item_of(body)
        with lock:
            times.setdefault(k, []).append(time.time())
            if k in seen:
                return None
            seen[k] = n = len(seen)
        return kinds[(n // 2) % len(kinds)] if n % 2 == 0 else None

    caplog.set_level(logging.DEBUG)
    with StubServer(handler=api_reply, failure_fn=failure, retry_after="0.5", hang_s=6) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", key)
        rc = H.main(["api", "--input", f"{world}/train.json", "--output", str(tmp_path / "api.jsonl"),
                     "--workers", "4", "--backoff", "0.01", "--timeout", "2", "--vision"])
    assert rc == 0
    fails = sum(r.action != "ok" for r in srv.requests)
    # half of the items failed once: a third of the requests (more only if a loaded machine timed one out)
    assert fails == N // 2 and len(srv.requests) >= N + N // 2
    assert srv.requests[0].headers["Authorization"] == f"Bearer {key}"  # the key was used ...
    assert srv.requests[0].body["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    rows = read_rows(tmp_path / "api.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(f"train_{i:06d}:api" for i in range(N))
    assert all(r["rejected"].endswith("there is also a dog .") and r["category"] == "object" for r in rows)
    rate_limited = [r for r in srv.requests if r.action == "429"]
    assert rate_limited
    for r in rate_limited:  # Retry-After: 0.5 beats the 0.01 s backoff
        t = times[item_of(r.body)]
        assert t[1] - t[0] >= 0.45
    logs = capsys.readouterr()
    assert "done 30, skipped 0, failed 0" in logs.out
    for text in [logs.out, logs.err, caplog.text] + [f.read_text() for f in tmp_path.iterdir()]:
        assert key not in text  # ... and never written or logged


def test_api_item_failure_is_recorded_then_retried_on_rerun(world, tmp_path, monkeypatch, capsys):
    first = json.loads((world / "train.json").read_text())[0]["conversations"][1]["value"]
    with StubServer(handler=api_reply) as srv:
        srv.failure_fn = lambda i, body: "500" if item_of(body) == first else None
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        args = ["api", "--input", f"{world}/train.json", "--output", str(tmp_path / "o.jsonl"), "--workers", "3",
                "--backoff", "0.001", "--max-attempts", "2"]
        assert H.main(args) == 1  # the run went on; the exit status says something failed
        out = capsys.readouterr().out
        assert "done 29, skipped 0, failed 1" in out and "train_000000:api" in out and "HTTP 500" in out
        assert len(read_rows(tmp_path / "o.jsonl")) == N - 1
        assert read_rows(tmp_path / "o.failed.jsonl")[0]["id"] == "train_000000:api"
        srv.failure_fn = None
        n = len(srv.requests)
        assert H.main(args) == 0
        assert len(srv.requests) - n == 1  # only the failed item is asked again
    ids = [r["id"] for r in read_rows(tmp_path / "o.jsonl")]
    assert len(ids) == N == len(set(ids))


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
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
        first = [json.loads(x)["id"] for x in (tmp_path / "o.jsonl").read_text().splitlines() if x.strip()]
        assert len(first) == 10
        srv.failure_fn = None
        n_before = len(srv.requests)
        subprocess.check_call(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ids = [json.loads(x)["id"] for x in (tmp_path / "o.jsonl").read_text().splitlines()]
        assert len(ids) == N == len(set(ids)) and ids[:10] == first
        assert len(srv.requests) - n_before == N - len(first)  # nothing done before the kill is asked again


def test_long_jobs_refuse_to_resume_with_other_settings(world, tiny, tmp_path, monkeypatch):
    """A killed noise run resumed with another --t or retrained weights, or a clip-rank run resumed with another
    --temperature, refuses (its parts hold the first run's answers; finishing would mix two runs in one file); the
    batch size and a copy of the checkpoint elsewhere are no change."""
    args = ["noise", "--input", f"{world}/train.json", "--max-new-tokens", "4", "--output", str(tmp_path / "n.jsonl")]
    kill_after(monkeypatch, "generate_answers", 1)
    with pytest.raises(KeyboardInterrupt):
        H.main(args + ["--checkpoint", str(tiny[0]), "--batch-size", "8"])
    monkeypatch.undo()
    with pytest.raises(SystemExit, match=r"n.jsonl.parts holds the work of another run \(t: 500 -> 400\)"):
        H.main(args + ["--checkpoint", str(tiny[0]), "--t", "400"])
    other = tmp_path / "retrained"
    shutil.copytree(tiny[0], other)
    weights = next(p for p in other.iterdir() if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(4) if data[-4:] != bytes(4) else b"\x00\x00\x80\x3f"
    weights.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=r"holds the work of another run \(checkpoint: '\w+' -> '\w+'\)"):
        H.main(args + ["--checkpoint", str(other)])
    shutil.copytree(tiny[0], tmp_path / "copy")
    assert H.main(args + ["--checkpoint", str(tmp_path / "copy"), "--batch-size", "5"]) == 0
    assert not (tmp_path / "n.jsonl.parts").exists()

    kill_after(monkeypatch, "rank_batch", 1)
    with pytest.raises(KeyboardInterrupt):
        clip_rank(tiny, f"{world}/train.json", tmp_path / "c.jsonl")
    monkeypatch.undo()
    with pytest.raises(SystemExit, match=r"holds the work of another run \(temperature: 1.0 -> 0.5\)"):
        clip_rank(tiny, f"{world}/train.json", tmp_path / "c.jsonl", "--temperature", "0.5")
    assert clip_rank(tiny, f"{world}/train.json", tmp_path / "c.jsonl", "--batch-size", "3") == 0


def test_a_truncated_or_empty_checkpoint_is_one_line_in_each_command(world, tiny, tmp_path):
    """From the shell, eval.py generate and hallucinate.py noise on a half-copied or empty model.safetensors: one
    line naming the file, exit 1 (it was a 21-27 line SafetensorError traceback; train.py's one line is
    tests/test_mobilevlm_files.py::test_train_command_says_it_in_one_line)."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny[0], ckpt)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    image = json.loads((world / "train.json").read_text())[0]["image"]
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 0, "image": str(world / image),
                                                  "prompt": "Describe this image ."}) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for content, why in ((data[: len(data) // 2], "not a readable safetensors file, truncated or corrupt"),
                         (b"", "the file is empty")):
        weights.write_bytes(content)
        for cmd in (["eval.py", "generate", "--checkpoint", str(ckpt), "--questions", str(tmp_path / "q.jsonl"),
                     "--output", str(tmp_path / "a.jsonl")],
                    ["hallucinate.py", "noise", "--checkpoint", str(ckpt), "--input", f"{world}/train.json",
                     "--output", str(tmp_path / "n.jsonl")]):
            r = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 1 and len(lines) >= 1 and "Traceback" not in r.stderr, r.stderr[-800:]
            assert f"{weights}: {why}" in lines[-1], (cmd[0], lines)
    weights.write_bytes(data)  # downloaded again: the failed runs left nothing that refuses the rerun
    assert H.main(["noise", "--checkpoint", str(ckpt), "--input", f"{world}/train.json", "--max-new-tokens", "2",
                   "--output", str(tmp_path / "n.jsonl")]) == 0
