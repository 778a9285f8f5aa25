"""train_data.py: both preference formats and SFT JSON load; every bad input names its file and line, item or path;
skips are counted by reason; truncation cuts responses only; collation puts chosen rows before rejected rows."""
import json

import pytest
import torch

import train_data as D
from toy import world as toyworld
from model import Tokenizer
from model.tokenizer import IGNORE_INDEX
from noise import NoiseSchedule

N_IMG = 4  # image tokens per image in these tests


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    toyworld.build_world(str(d), n_train=4, n_test=1, seed=1)
    return d, Tokenizer.from_pretrained(str(d))


def pair(**kw):
    rec = {"id": "p", "image": "images/train_000000.png", "prompt": "<image>\nDescribe this image.",
           "chosen": "a red ball .", "rejected": "a blue ball .", "strategy": "rules", "category": "attribute"}
    rec.update(kw)
    return json.dumps(rec)


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def load(path, tok, policy="error", max_len=512):
    skips = D.Skips(policy)
    rows = D.load_pairs(path, tok, N_IMG, "llava_hf", max_len, skips)
    return rows, skips


def test_trl_jsonl_loads_with_labels_on_the_answer_only(world):
    d, tok = world
    rows, skips = load(write(d / "ok.jsonl", [pair(id="a"), pair(id="b", images=["images/train_000001.png"])]), tok)
    assert [r["id"] for r in rows] == ["a", "b"] and skips.report() == "  nothing skipped or truncated"
    r = rows[0]
    assert r["image"] == str(d / "images/train_000000.png")  # relative to the data file's directory
    assert r["chosen_ids"].count(tok.image_token_id) == N_IMG
    scored = [i for i, l in zip(r["chosen_ids"], r["chosen_labels"]) if l != IGNORE_INDEX]
    assert scored == tok.encode("a red ball .") + [tok.eos_id]
    assert rows[1]["image"] == str(d / "images/train_000001.png")


def test_malformed_lines_name_file_and_line(world):
    d, tok = world
    path = write(d / "bad.jsonl", [pair(), "{not json", pair(chosen=None), json.dumps({"id": "x", "prompt": "q"}),
                                   pair(images=["a.png", "b.png"])])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON"):
        load(path, tok)
    rows, skips = load(path, tok, "skip")
    assert len(rows) == 1 and skips.counts == {"malformed JSON": 1, "malformed record": 3}
    report = skips.report()
    assert "bad.jsonl:2" in report and "bad.jsonl:3" in report  # first place of each reason
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed record: missing key 'chosen'"):
        load(write(d / "bad.jsonl", [pair(), json.dumps({"id": "x", "prompt": "q", "image": "i.png"})]), tok)


def test_no_signal_pairs_are_always_skipped_and_counted(world):
    d, tok = world
    path = write(d / "same.jsonl", [pair(), pair(rejected="a red ball ."), pair(chosen="  "), pair(rejected="")])
    rows, skips = load(path, tok, "error")  # not an error even under the strict policy
    assert len(rows) == 1 and skips.counts == {"chosen == rejected": 1, "empty response": 2}


def test_truncation_cuts_the_response_never_the_prompt(world):
    d, tok = world
    long = " ".join(["a red ball ."] * 20)
    path = write(d / "long.jsonl", [pair(chosen=long, rejected="a blue" + long[5:]), pair()])
    full, _ = load(path, tok)
    prompt_len = full[0]["chosen_labels"].index(next(l for l in full[0]["chosen_labels"] if l != IGNORE_INDEX))
    rows, skips = load(path, tok, max_len=prompt_len + 5)
    assert skips.truncated == 2  # chosen and rejected of the long pair; the short pair fits
    r = rows[0]
    assert len(r["chosen_ids"]) == prompt_len + 5 and r["chosen_ids"] == full[0]["chosen_ids"][:prompt_len + 5]
    assert r["chosen_ids"].count(tok.image_token_id) == N_IMG  # every image token kept
    assert "truncated the response of 2" in skips.report()
    # answers that differ only past max_len carry nothing: skipped, counted
    rows, skips = load(write(d / "long2.jsonl", [pair(chosen=long, rejected=long + " red")]), tok,
                       max_len=prompt_len + 5)
    assert rows == [] and skips.counts == {"chosen == rejected within max_len": 1}
    with pytest.raises(ValueError, match=r"long.jsonl:1: prompt longer than max_len"):
        load(path, tok, max_len=prompt_len - 1)


def test_povid_json_format_scores_the_last_answer_only(world):
    d, tok = world
    human = {"from": "human", "value": "<image>\nDescribe this image."}
    turns = [human, {"from": "gpt", "value": "a red ball ."}, {"from": "human", "value": "Is there a dog?"}]
    items = [{"id": "m", "image": "images/train_000000.png", "conversations": turns + [{"from": "gpt", "value": "No."}],
              "rejected_conversations": turns + [{"from": "gpt", "value": "Yes."}]},
             {"id": "z", "image": "images/train_000000.png", "conversations": [human, {"from": "gpt", "value": "x"}],
              "rejected_conversations": [{"from": "human", "value": "other"}, {"from": "gpt", "value": "y"}]}]
    path = d / "povid.json"
    path.write_text(json.dumps(items))
    with pytest.raises(ValueError, match=r"povid.json: item 1: malformed record: .*differ before the last answer"):
        load(str(path), tok)
    rows, skips = load(str(path), tok, "skip")
    assert len(rows) == 1 and skips.counts == {"malformed record": 1}
    scored = [i for i, l in zip(rows[0]["chosen_ids"], rows[0]["chosen_labels"]) if l != IGNORE_INDEX]
    assert scored == tok.encode("No.") + [tok.eos_id]  # the shared first answer is context, not scored
    del items[0]["rejected_conversations"]  # said so, not read as a TRL line missing 'prompt'
    path.write_text(json.dumps(items))
    with pytest.raises(ValueError, match=r"povid.json: item 0: malformed record: a POVID item .* needs "
                                         r"'rejected_conversations'"):
        load(str(path), tok)
    path.write_text('[{"id": 1},\n{oops}]')
    with pytest.raises(ValueError, match=r"povid.json:2: malformed JSON"):
        load(str(path), tok)


def test_missing_and_unreadable_images_name_their_path(world):
    d, tok = world
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    path = write(d / "img.jsonl", [pair(), pair(id="gone", image="nope/missing.png"),
                                   pair(id="junk", image="broken.png")])
    rows, skips = load(path, tok)
    bad = D.image_problems(sorted({r["image"] for r in rows}), D.ImageStore(size=32, pad=True, cache_mb=0))
    with pytest.raises(ValueError, match=r"img.jsonl:2 \(id 'gone'\): missing image: .*nope/missing.png"):
        D.check_images(rows, bad, skips)
    skips = D.Skips("skip")
    kept = D.check_images(rows, bad, skips)
    assert [r["id"] for r in kept] == ["p"]
    assert skips.counts == {"missing image": 1, "unreadable image": 1}
    assert "broken.png" in skips.report() and "missing.png" in skips.report()


def test_sft_conversations_multi_turn_and_item_errors(world):
    d, tok = world
    recs = json.loads((d / "train.json").read_text())
    recs.append({"id": "text-only", "conversations": [{"from": "human", "value": "Hi"},
                                                      {"from": "gpt", "value": "a ."}]})
    recs.append({"id": "silent", "image": recs[0]["image"], "conversations": [{"from": "human", "value": "Hi"},
                                                                              {"from": "gpt", "value": " "}]})
    recs.append({"id": "broken", "image": recs[0]["image"], "conversations": [{"from": "gpt", "value": "a ."}]})
    (d / "sft.json").write_text(json.dumps(recs))
    with pytest.raises(ValueError, match=r"sft.json: item 6: malformed record: turn 0"):
        D.load_sft(str(d / "sft.json"), tok, N_IMG, "llava_hf", 512, D.Skips("error"))
    skips = D.Skips("skip")
    rows = D.load_sft(str(d / "sft.json"), tok, N_IMG, "llava_hf", 512, skips)
    assert len(rows) == 5 and skips.counts == {"empty response": 1, "malformed record": 1}
    assert rows[4]["image"] is None and tok.image_token_id not in rows[4]["input_ids"]
    n_answers = sum(1 for t in recs[0]["conversations"] if t["from"] == "gpt")
    assert rows[0]["labels"].count(IGNORE_INDEX) < len(rows[0]["labels"])
    assert sum(1 for i, l in zip(rows[0]["input_ids"], rows[0]["labels"]) if l == tok.eos_id) == n_answers
    b = D.collate_sft(rows[3:5], tok.pad_id, D.ImageStore(size=32, pad=True))
    assert b["pixel_values"].shape == (1, 3, 32, 32)  # only the row with an image has pixels
    assert b["attention_mask"].sum(1).tolist() == [len(rows[3]["input_ids"]), len(rows[4]["input_ids"])]


def test_collate_pairs_and_noisy_images(world):
    d, tok = world
    rows, _ = load(write(d / "c.jsonl", [pair(id="a"), pair(id="b", chosen="a very long red ball .")]), tok)
    images = D.ImageStore(size=32, pad=True)
    b = D.collate_pairs(rows, tok.pad_id, images)
    B, T = b["input_ids"].shape
    assert B == 4 and b["pixel_values"].shape == (4, 3, 32, 32) and b["ids"] == ["a", "b"]
    assert b["input_ids"][1].tolist()[:len(rows[1]["chosen_ids"])] == rows[1]["chosen_ids"]  # row 1 = chosen b
    assert b["input_ids"][2].tolist()[:len(rows[0]["rejected_ids"])] == rows[0]["rejected_ids"]  # row 2 = rejected a
    pad = b["attention_mask"] == 0
    assert pad[:, -1].any() and not pad[:, 0].any()  # right-padded for training
    assert (b["labels"][pad] == IGNORE_INDEX).all() and (b["input_ids"][pad] == tok.pad_id).all()
    s = NoiseSchedule("sigmoid")
    n1 = images.noisy(rows[0]["image"], 500, s, torch.Generator().manual_seed(3))
    n2 = images.noisy(rows[0]["image"], 500, s, torch.Generator().manual_seed(3))
    clean = images.pixels(rows[0]["image"])
    assert torch.equal(n1, n2) and n1.shape == clean.shape  # seeded: a resumed run redraws the same noise
    assert (n1 - clean).abs().mean() > 0.1


def test_image_cache_is_bounded_least_recently_used_out(tmp_path):
    """cache_mb bounds what the store keeps: each 32-px image is 12 KiB of fp32, so 30 KiB keeps the last two."""
    from PIL import Image
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 30), (i * 60, 10, 10)).save(p)
        paths.append(str(p))
    store = D.ImageStore(size=32, pad=True, cache_mb=30 / 1024)
    first = store.pixels(paths[0])
    for p in paths[1:]:
        store.pixels(p)
    assert [k[1] for k in store._cache] == paths[2:] and store._bytes <= 30 * 1024
    assert torch.equal(store.pixels(paths[0]), first)  # decoded again, the same pixels
    none = D.ImageStore(size=32, pad=True, cache_mb=0)
    none.pixels(paths[0])
    assert not none._cache
