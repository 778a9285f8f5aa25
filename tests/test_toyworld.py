"""toyworld.py: deterministic scenes, captions that agree with the annotations, the designed co-occurrence, a
tokenizer that covers every word, configs the model package loads."""
import json
import os

import pytest

import toyworld
from model import CLIPConfig, LlavaConfig, Tokenizer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    toyworld.build_world(str(out), n_train=160, n_test=40, seed=3)
    return out


def test_deterministic(world, tmp_path):
    toyworld.build_world(str(tmp_path), n_train=160, n_test=40, seed=3)
    for name in ("train.json", "annotations.json", "tokenizer.json"):
        assert (world / name).read_bytes() == (tmp_path / name).read_bytes(), name
    assert (world / "images/test_000170.png").read_bytes() == (tmp_path / "images/test_000170.png").read_bytes()
    img, ann, _ = toyworld.render(170, 3)  # any scene regenerates alone
    assert ann["caption"] == json.loads((world / "annotations.json").read_text())["test_000170"]["caption"]


def caption_categories(caption):
    """Categories named in a caption, through the synonym table (two-word names first)."""
    words = caption.replace(".", " ").replace(",", " ").split()
    syn = {s: c for c, ss in toyworld.SYNONYMS.items() for s in ss + [toyworld.plural(x) for x in ss]}
    for c in toyworld.categories():
        syn[c], syn[toyworld.plural(c)] = c, c
    found, i = set(), 0
    while i < len(words):
        two = " ".join(words[i:i + 2])
        if two in syn:
            found.add(syn[two])
            i += 2
            continue
        if words[i] in syn:
            found.add(syn[words[i]])
        i += 1
    return found


def test_captions_are_exact(world):
    anns = json.loads((world / "annotations.json").read_text())
    for iid, a in anns.items():
        assert caption_categories(a["caption"]) == set(a["objects"]), (iid, a["caption"], a["objects"])
        for inst in a["instances"]:
            x0, y0, x1, y1 = inst["box"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64


def test_cooccurrence_statistics():
    import random
    n, with_plate, fork_and_plate = 4000, 0, 0
    for i in range(n):
        scene, objs, _ = toyworld.sample_scene(random.Random(i))
        if "plate" in objs:
            with_plate += 1
            fork_and_plate += "fork" in objs
    assert abs(fork_and_plate / with_plate - 0.85) < 0.03  # the designed P(fork | plate)


def test_tokenizer_covers_every_word(world):
    tok = Tokenizer.from_pretrained(str(world))
    unk = tok.token_to_id("<unk>")
    train = json.loads((world / "train.json").read_text())
    for item in train[:50]:
        ids, labels = tok.encode_chat(item["conversations"], num_image_tokens=64, template="llava_hf")
        assert unk not in ids
        assert sum(l != -100 for l in labels) > 5
    assert tok.decode(tok.encode("a table scene with a fork .")) == "a table scene with a fork ."


def test_configs_load(world):
    cfg = LlavaConfig.from_dir(str(world / "llava_config"))
    tok = Tokenizer.from_pretrained(str(world / "llava_config"))
    assert cfg.image_token_id == tok.image_token_id and cfg.text.eos_token_id == tok.eos_id
    assert cfg.num_image_tokens == 64 and cfg.text.vocab_size >= tok.vocab_size
    clip = CLIPConfig.from_dir(str(world / "clip_config"))
    assert clip.text.eos_token_id == tok.eos_id and clip.vision.image_size == 64
    assert os.path.exists(world / "synonyms.txt") and (world / "splits.json").exists()
