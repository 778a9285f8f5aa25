"""toy/world.py: deterministic scenes, captions and QA that agree exactly with the annotations, the designed
co-occurrence and faintness rates, a tokenizer that covers every word, configs the model package loads."""
import json
import os
import random
import re
from collections import Counter

import pytest

from toy import world as toyworld
from model import CLIPConfig, LlavaConfig, Tokenizer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    toyworld.build_world(str(out), n_train=160, n_test=40, seed=3, n_val=30, n_pretrain=40)
    return out


def test_deterministic(world, tmp_path):
    toyworld.build_world(str(tmp_path), n_train=160, n_test=40, seed=3, n_val=30, n_pretrain=40)
    for name in ("train.json", "sft.json", "annotations.json", "pretrain_annotations.json", "tokenizer.json",
                 "test_questions.jsonl", "val_questions.jsonl", "images/pretrain_000007.png"):
        assert (world / name).read_bytes() == (tmp_path / name).read_bytes(), name
    assert (world / "images/test_000170.png").read_bytes() == (tmp_path / "images/test_000170.png").read_bytes()
    img, ann, _ = toyworld.render(170, 3)  # any scene regenerates alone
    assert ann["caption"] == json.loads((world / "annotations.json").read_text())["test_000170"]["caption"]
    _, other, _ = toyworld.render(170, 4)
    assert other != ann  # and the seed matters


def test_validation_split(world, tmp_path):
    """Validation scenes are held out like the test ones, disjoint from both, in the same formats; adding them
    leaves every train and test file as it was, so a world grown by a validation split keeps its trained models."""
    split = json.loads((world / "splits.json").read_text())
    assert len(split["val"]) == 30 and all(i.startswith("val_") for i in split["val"])
    assert not set(split["val"]) & (set(split["train"]) | set(split["test"]))
    anns = json.loads((world / "annotations.json").read_text())
    val = json.loads((world / "val_annotations.json").read_text())
    assert val == {k: anns[k] for k in split["val"]}
    qs = [json.loads(line) for line in (world / "val_questions.jsonl").read_text().splitlines()]
    assert [q["question_id"] for q in qs] == split["val"] and {q["prompt"] for q in qs} == {toyworld.CAPTION_PROMPT}
    assert all((world / q["image"]).exists() for q in qs)
    # the same world without validation scenes
    toyworld.build_world(str(tmp_path), n_train=160, n_test=40, seed=3, n_pretrain=40)
    assert json.loads((tmp_path / "splits.json").read_text()) == {**split, "val": []}
    for name in ("train.json", "sft.json", "test_questions.jsonl", "test_annotations.json", "tokenizer.json",
                 "images/test_000199.png"):
        assert (world / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_size_scales_the_same_scene():
    small, a64, _ = toyworld.render(5, 0, size=64)
    big, a96, _ = toyworld.render(5, 0, size=96)
    assert small.size == (64, 64) and big.size == (96, 96)
    assert a64["caption"] == a96["caption"] and a64["objects"] == a96["objects"]
    for i64, i96 in zip(a64["instances"], a96["instances"]):
        assert all(abs(b * 1.5 - c) <= 1.5 for b, c in zip(i64["box"], i96["box"]))
    with pytest.raises(ValueError, match="multiple of 4"):
        toyworld.build_world("/nonexistent-never-written", 1, 1, size=66)


NAMES = {**{s: c for c, ss in toyworld.SYNONYMS.items() for s in ss}, **{c: c for c in toyworld.categories()}}
NAMES.update({toyworld.plural(w): c for w, c in list(NAMES.items())})
NUMBER = {w: n for n, w in toyworld.NUMBERS.items()}


def parse_caption(caption):
    """The grammar read back: scene, [(count, small, colour, category)], optional (a, rel, b)."""
    m = re.fullmatch(r"an? (\w+) scene with (.*?) \.(?: the (.+) is (left|right) of the (.+) \.)?", caption)
    assert m, caption
    phrases = parse_listing(m.group(2))
    rel = (NAMES[m.group(3)], m.group(4), NAMES[m.group(5)]) if m.group(3) else None
    return m.group(1), phrases, rel


def parse_listing(listing):
    """"a red cup , a small fork and two books" -> [(count, small, colour, category)]."""
    phrases = []
    for p in listing.replace(" and ", " , ").split(" , "):
        words = p.split()
        count = NUMBER.get(words[0], 1)
        assert words[0] in NUMBER or words[0] in ("a", "an"), p
        rest = words[1:]
        small = rest[0] == "small"
        rest = rest[1:] if small else rest
        colour = rest[0] if rest[0] in toyworld.COLORS else None
        rest = rest[1:] if colour else rest
        phrases.append((count, small, colour, NAMES[" ".join(rest)]))
    return phrases


def check_phrases(a, phrases):
    """Each category once, left to right, with its exact count, "small" and colour; returns instances by category."""
    assert sorted(c for _, _, _, c in phrases) == sorted(set(a["objects"])), a["caption"]
    by_cat = {}
    for inst in a["instances"]:
        by_cat.setdefault(inst["category"], []).append(inst)
        x0, y0, x1, y1 = inst["box"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    lefts = [min(i["box"][0] for i in by_cat[c]) for _, _, _, c in phrases]
    assert lefts == sorted(lefts), a["caption"]  # mentioned left to right
    for count, small, colour, cat in phrases:
        inst = by_cat[cat]
        assert count == len(inst), a["caption"]
        assert small == (count == 1 and inst[0]["size"] == "small"), a["caption"]
        assert colour == (inst[0]["color"] if len({i["color"] for i in inst}) == 1 else None), a["caption"]
    return by_cat


def test_captions_are_exact(world):
    anns = json.loads((world / "annotations.json").read_text())
    n_rel = 0
    for iid, a in anns.items():
        scene, phrases, rel = parse_caption(a["caption"])
        assert scene == a["scene"]
        by_cat = check_phrases(a, phrases)
        if rel:
            n_rel += 1
            ca, cb = ((by_cat[c][0]["box"][0] + by_cat[c][0]["box"][2]) / 2 for c in (rel[0], rel[2]))
            assert (ca < cb) == (rel[1] == "left") and abs(ca - cb) >= 6, a["caption"]
    assert n_rel > len(anns) // 2  # relations are common, not an untested corner


def test_qa_answers_are_exact(world):
    """Every QA answer, in train.json's caption conversations and in sft.json's question-first ones, is true."""
    anns = json.loads((world / "annotations.json").read_text())
    train = json.loads((world / "train.json").read_text())
    sft = json.loads((world / "sft.json").read_text())
    sft = [x for x in sft if not x["id"].startswith("pretrain_")]  # test_pretraining_scenes checks those
    assert [x for x in sft if not x["id"].endswith("_qa")] == train and len(sft) == 2 * len(train)
    kinds = set()
    for item in sft:
        a, conv = anns[item["id"].removesuffix("_qa")], item["conversations"]
        if item["id"].endswith("_qa"):  # the image comes with the first question
            assert conv[0]["value"].startswith("<image>\n") and "<image>" not in "".join(t["value"] for t in conv[1:])
            turns = [{"value": conv[0]["value"].removeprefix("<image>\n")}] + conv[1:]
        else:
            assert conv[0]["value"] == "<image>\n" + toyworld.CAPTION_PROMPT and conv[1]["value"] == a["caption"]
            turns = conv[2:]
        for q, ans in zip(turns[0::2], turns[1::2]):
            q, ans = q["value"], ans["value"]
            if m := re.fullmatch(r"Is there an? (.+) in the image\?", q):
                kinds.add("exists")
                assert ans == ("Yes." if m.group(1) in a["objects"] else "No."), (q, ans, a["objects"])
            elif m := re.fullmatch(r"What color is the (.+)\?", q):
                kinds.add("color")
                (inst,) = [i for i in a["instances"] if i["category"] == m.group(1)]
                assert ans == inst["color"] + "."
            elif m := re.fullmatch(r"How many (.+) are there\?", q):
                kinds.add("count")
                assert ans == toyworld.NUMBERS[a["objects"].count(NAMES[m.group(1)])] + "."
            else:
                raise AssertionError(f"unknown question {q!r}")
    assert kinds == {"exists", "color", "count"}


def test_cooccurrence_and_weak_evidence_rates():
    """Measured rates match the design table: P(companion | scene), faint and covered companions."""
    n, k = 4000, 0
    seen = {s: 0 for s in toyworld.SCENES}
    hits = {(s, c): 0 for s, (_, _, comps, _) in toyworld.SCENES.items() for c, _ in comps}
    for i in range(n):
        scene, objs, _ = toyworld.sample_scene(random.Random(i))
        seen[scene] += 1
        for c, _ in toyworld.SCENES[scene][2]:
            hits[scene, c] += c in objs
    for (s, c), h in hits.items():
        p = dict(toyworld.SCENES[s][2])[c]
        sd = (p * (1 - p) / seen[s]) ** 0.5
        assert abs(h / seen[s] - p) < 4 * sd, (s, c, h / seen[s], p)
    faint = covered = comps = 0
    for i in range(1500):
        _, a, _ = toyworld.render(i, 0)
        names = {c for c, _ in toyworld.SCENES[a["scene"]][2]}
        for inst in a["instances"]:
            if inst["category"] in names:
                comps += 1
                faint += inst["faint"]
                covered += inst["occluded"]
            else:
                k += inst["faint"] or inst["occluded"]
    assert k == 0  # only companions are ever hard to see
    assert abs(faint / comps - toyworld.P_FAINT) < 0.03
    assert abs(covered / comps - (1 - toyworld.P_FAINT) * toyworld.P_OCCLUDED) < 0.03


def test_tokenizer_covers_every_word(world, tmp_path):
    tok = Tokenizer.from_pretrained(str(world))
    unk = tok.token_to_id("<unk>")
    for item in json.loads((world / "train.json").read_text()):
        ids, labels = tok.encode_chat(item["conversations"], num_image_tokens=16, template="llava_hf")
        assert unk not in ids, item["id"]
        assert sum(l != -100 for l in labels) > 5
        ids, _ = tok.encode_chat(item["conversations"], num_image_tokens=16, template="vicuna_v1")
        assert unk not in ids, item["id"]
    assert tok.decode(tok.encode("a table scene with a fork .")) == "a table scene with a fork ."
    # the vocabulary is the grammar's, not the sample's: another seed and size give the same tokenizer
    toyworld.build_world(str(tmp_path), n_train=5, n_test=2, seed=9, size=96, n_pretrain=3)
    assert (tmp_path / "tokenizer.json").read_bytes() == (world / "tokenizer.json").read_bytes()
    # without pretraining scenes the vocabulary lacks only LIST_PROMPT's new words (the demo's world is unchanged)
    toyworld.build_world(str(tmp_path / "plain"), n_train=5, n_test=2, seed=9)
    plain = Tokenizer.from_pretrained(str(tmp_path / "plain"))
    assert set(tok.tk.get_vocab()) - set(plain.tk.get_vocab()) == {"List", "objects"}
    split = json.loads((tmp_path / "plain" / "splits.json").read_text())
    assert "pretrain" not in split and not (tmp_path / "plain" / "pretrain_annotations.json").exists()
    assert LlavaConfig.from_dir(str(tmp_path / "llava_config")).num_image_tokens == 16


def test_configs_and_side_files(world):
    cfg = LlavaConfig.from_dir(str(world / "llava_config"))
    tok = Tokenizer.from_pretrained(str(world / "llava_config"))
    assert cfg.image_token_id == tok.image_token_id and cfg.text.eos_token_id == tok.eos_id
    assert cfg.pad_token_id == tok.pad_id and cfg.text.bos_token_id == tok.bos_id
    assert cfg.num_image_tokens == 16 and cfg.text.vocab_size >= tok.vocab_size
    clip = CLIPConfig.from_dir(str(world / "clip_config"))
    assert clip.text.eos_token_id == tok.eos_id and clip.vision.image_size == 64
    syn = [line.split(", ") for line in (world / "synonyms.txt").read_text().splitlines()]
    assert [s[0] for s in syn] == toyworld.categories() and ["cup", "mug"] in syn
    vocab = json.loads((world / "vocab.json").read_text())
    assert vocab["synonyms"]["automobile"] == "car" and set(vocab["colors"]) == set(toyworld.COLORS)
    split = json.loads((world / "splits.json").read_text())
    anns = json.loads((world / "annotations.json").read_text())
    assert len(split["train"]) == 160 and len(split["test"]) == 40
    assert set(anns) == set(split["train"] + split["test"] + split["val"])
    qs = [json.loads(line) for line in (world / "test_questions.jsonl").read_text().splitlines()]
    assert [q["question_id"] for q in qs] == split["test"] and qs[0]["prompt"] == toyworld.CAPTION_PROMPT
    assert all((world / q["image"]).exists() for q in qs)


def test_pretraining_scenes(world):
    """Pretraining scenes: only in sft.json, after every training conversation; the exact listing under
    LIST_PROMPT, no scene prefix, no relation; then two exact existence questions."""
    split = json.loads((world / "splits.json").read_text())
    anns = json.loads((world / "pretrain_annotations.json").read_text())
    assert split["pretrain"] == [f"pretrain_{j:06d}" for j in range(40)] == list(anns)
    assert not set(anns) & set(json.loads((world / "annotations.json").read_text()))
    assert not any(x["id"].startswith("pretrain_") for x in json.loads((world / "train.json").read_text()))
    sft = json.loads((world / "sft.json").read_text())
    assert [x["id"] for x in sft[-40:]] == split["pretrain"] and len(sft) == 2 * 160 + 40
    _, first, _ = toyworld.render(toyworld.PRETRAIN_OFFSET, 3, pretrain=True)
    assert first["caption"] == anns["pretrain_000000"]["caption"]  # any pretraining scene regenerates alone
    answers = []
    for item in sft[-40:]:
        a, conv = anns[item["id"]], item["conversations"]
        assert item["image"] == a["image"] and (world / a["image"]).exists()
        assert [t["from"] for t in conv] == ["human", "gpt"] * 3
        assert conv[0]["value"].startswith("<image>\n") and "<image>" not in "".join(t["value"] for t in conv[1:])
        assert conv[0]["value"] == "<image>\n" + toyworld.LIST_PROMPT and conv[1]["value"] == a["caption"]
        for q, ans in zip(conv[2::2], conv[3::2]):
            m = re.fullmatch(r"Is there an? (.+) in the image\?", q["value"])
            assert m and ans["value"] == ("Yes." if m.group(1) in a["objects"] else "No."), (q, ans, a["objects"])
            answers.append(ans["value"])
        assert a["caption"].endswith(" .") and "scene" not in a["caption"] and " of the " not in a["caption"]
        check_phrases(a, parse_listing(a["caption"][:-2]))
    assert 25 <= answers.count("Yes.") <= 55  # balanced (80 answers)


def test_pretraining_scenes_have_no_cooccurrence():
    """In pretraining scenes an object says nothing about another or about the background, and any object (not
    only a companion) may be faint or covered: P(fork | table background) = P(fork | other backgrounds) and
    P(fork | plate) = P(fork), within sampling error; every category is faint at about P_FAINT."""
    n = 6000
    rows = [toyworld.sample_pretrain_scene(random.Random(i)) for i in range(n)]
    assert all(2 <= len(set(objs)) <= 5 and len(objs) <= 8 for _, objs, _ in rows)
    # 2-5 distinct categories of 15, uniformly: P(fork) = 3.5 / 15; given a plate, the other 2.5 of 14 (drawing
    # without replacement is the only dependence); in a table scene of the main world it is 0.85
    p = sum("fork" in objs for _, objs, _ in rows) / n
    assert abs(p - 3.5 / 15) < 0.02
    for frac in (sum("fork" in o for s, o, _ in rows if s == "table") / sum(s == "table" for s, _, _ in rows),
                 sum("fork" in o for s, o, _ in rows if s != "table") / sum(s != "table" for s, _, _ in rows)):
        assert abs(frac - p) < 0.04, (frac, p)
    plate = sum("fork" in o for _, o, _ in rows if "plate" in o) / sum("plate" in o for _, o, _ in rows)
    assert abs(plate - 2.5 / 14) < 0.04, plate
    faint, seen = {}, {}
    for j in range(1500):
        _, a, _ = toyworld.render(toyworld.PRETRAIN_OFFSET + j, 0, pretrain=True)
        for inst in a["instances"]:
            seen[inst["category"]] = seen.get(inst["category"], 0) + 1
            faint[inst["category"]] = faint.get(inst["category"], 0) + inst["faint"]
    assert set(seen) == set(toyworld.categories())
    assert all(abs(faint[c] / seen[c] - toyworld.P_FAINT) < 0.1 for c in seen), {c: faint[c] / seen[c] for c in seen}


def test_caption_noise_adds_only_absent_companions(world, tmp_path):
    """--caption-noise: sft.json's caption turns name, on top of every drawn object, absent companions of the scene
    type at noise x their co-occurrence; nothing else changes (train.json, the QA turns, every other file), and at
    noise 0 the world is the plain one."""
    toyworld.build_world(str(tmp_path), n_train=400, n_test=5, seed=3, caption_noise=0.5)
    anns = json.loads((tmp_path / "annotations.json").read_text())
    train = json.loads((tmp_path / "train.json").read_text())
    sft = json.loads((tmp_path / "sft.json").read_text())
    plain = tmp_path / "plain"
    toyworld.build_world(str(plain), n_train=400, n_test=5, seed=3)
    assert (plain / "train.json").read_bytes() == (tmp_path / "train.json").read_bytes()
    assert (plain / "tokenizer.json").read_bytes() == (tmp_path / "tokenizer.json").read_bytes()
    assert [x for x in sft if not x["id"].endswith("_qa")] != train  # the captions differ ...
    assert [x for x in sft if x["id"].endswith("_qa")] == \
        [x for x in json.loads((plain / "sft.json").read_text()) if x["id"].endswith("_qa")]  # ... the QA does not
    named, chances = Counter(), Counter()
    for item, exact in zip((x for x in sft if not x["id"].endswith("_qa")), train):
        a, conv = anns[item["id"]], item["conversations"]
        assert conv[0] == exact["conversations"][0] and conv[2:] == exact["conversations"][2:]
        assert conv[1]["value"] == a.get("sft_caption", a["caption"]) and a.get("sft_caption") != a["caption"]
        scene, phrases, _ = parse_caption(conv[1]["value"])
        extra = {c for _, _, _, c in phrases} - set(a["objects"])
        assert scene == a["scene"] and {c for _, _, _, c in phrases} >= set(a["objects"])
        for c, p in toyworld.SCENES[scene][2]:
            if c not in a["objects"]:
                chances[c] += p * 0.5
                named[c] += c in extra
        assert extra <= {c for c, _ in toyworld.SCENES[scene][2]}, conv[1]["value"]  # only absent companions
    total, expected = sum(named.values()), sum(chances.values())
    assert abs(total - expected) < 4 * expected ** 0.5, (total, expected)  # the designed rate (Poisson-ish bound)
    assert total > 30
