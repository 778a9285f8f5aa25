"""rehearsal/assets.py: the real LLaMA and CLIP tokenizers rebuilt from registry packages.

LLaMA: the reference ids are the ones llama-tokenizer-js tests itself with (read from the same package: they come
from the slow SentencePiece tokenizer), plus "Hello world!" -> 1 15043 3186 29991, "\\n" = <0x0A> = 13, "▁" = 29871,
llava-hf's <image> 32000 / <pad> 32001; transformers' LlamaTokenizer must load the directory and agree.
CLIP: against transformers' CLIPTokenizer built from the vocab.json + merges.txt written beside tokenizer.json, and
against openai's BPE algorithm (simple_tokenizer.py) written out below, on sentences with case, punctuation,
contractions, digits, accents, emoji and odd whitespace.

The assets are built once by `make test` (the Makefile's prerequisite); built here if missing (needs the registries).
"""
import json
import os
import re
import tarfile

import pytest
import regex
from tokenizers import Tokenizer as HFTokenizer

from model import Tokenizer
from rehearsal import assets

OUT = os.environ.get("POVID_ASSETS", assets.DEFAULT_OUT)


@pytest.fixture(scope="module")
def llama_dir():
    return assets.llama_tokenizer_dir(OUT)


@pytest.fixture(scope="module")
def clip_dir():
    return assets.clip_tokenizer_dir(OUT)


def package_cases():
    """The (text, ids) pairs of llama-tokenizer-js's own testCase(...) calls, from the cached package."""
    name, version, _ = assets.LLAMA_PKG
    with tarfile.open(os.path.join(OUT, "download", f"{name}-{version}.tgz")) as tar:
        js = tar.extractfile("package/llama-tokenizer.js").read().decode("utf-8")
    cases = []
    for m in re.finditer(r"""testCase\((["'])(.*?)\1,\s*\[([\d,\s]+)\]\)""", js, re.S):
        text = m.group(2).replace("\\n", "\n").replace('\\"', '"')
        cases.append((text, [int(x) for x in m.group(3).split(",")]))
    return cases


def test_llama_known_ids(llama_dir):
    tk = HFTokenizer.from_file(os.path.join(llama_dir, "tokenizer.json"))
    assert tk.encode("Hello world!").ids == [1, 15043, 3186, 29991]
    assert tk.encode("Hello this is a test").ids == [1, 15043, 445, 338, 263, 1243]  # transformers' docstring
    assert tk.token_to_id("<0x0A>") == 13 and tk.token_to_id("▁") == 29871 and tk.get_vocab_size() == 32002
    assert tk.encode("\n", add_special_tokens=False).ids == [29871, 13]  # dummy prefix, then the byte
    assert [tk.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<image>", "<pad>")] == [0, 1, 2, 32000, 32001]
    cases = package_cases()
    assert len(cases) == 12 and max(len(ids) for _, ids in cases) > 400  # the llama paragraph is among them
    ref, diverge = dict(cases), []
    for text, ids in cases:
        if text.startswith(" "):
            diverge.append(text)
            continue
        got = tk.encode(text).ids
        assert got == ids, text[:40]
        assert tk.decode(got) == text
    # The one known slow/fast difference: SentencePiece always adds the dummy "▁"; Metaspace("first") does not
    # when the text already starts with a space, which then serves as the dummy prefix. llava-hf's non-legacy
    # tokenizer.json has the same pre-tokenizer, so transformers / vLLM do the same on it.
    assert sorted(diverge) == sorted([" grabbed", "           grabbed", " \n"])
    assert tk.encode(" grabbed").ids == ref["grabbed"] and tk.encode(" \n").ids == ref["\n"]
    assert tk.encode(" " * 11 + "grabbed").ids == [1, 965] + ref["grabbed"][1:]  # 965 = 10 x "▁", 9651 = 11


def test_llama_side_files_and_transformers(llama_dir):
    from transformers import AutoTokenizer
    files = sorted(os.listdir(llama_dir))
    assert files == [".built", "added_tokens.json", "special_tokens_map.json", "tokenizer.json",
                     "tokenizer_config.json"]
    with open(os.path.join(llama_dir, "tokenizer.json")) as f:
        j = json.load(f)
    assert j["normalizer"] is None and j["pre_tokenizer"]["type"] == "Metaspace"
    assert j["pre_tokenizer"]["prepend_scheme"] == "first" and j["model"]["byte_fallback"] is True
    with open(os.path.join(llama_dir, "added_tokens.json")) as f:
        assert json.load(f) == {"<image>": 32000, "<pad>": 32001}
    ours = Tokenizer.from_pretrained(llama_dir)
    assert (ours.bos_id, ours.eos_id, ours.unk_id, ours.pad_id, ours.image_token_id) == (1, 2, 0, 32001, 32000)
    hf = AutoTokenizer.from_pretrained(llama_dir)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.padding_side) == (1, 2, 32001, "left")
    assert hf.convert_tokens_to_ids(hf.image_token) == 32000
    prompt = "USER: <image>\nWhat is in this image? ASSISTANT: A cat.</s>USER: Is it é? ASSISTANT:"
    for text in [prompt] + [t for t, _ in package_cases()]:
        assert hf(text)["input_ids"] == ours.encode(text, add_bos=True)
    # the vicuna_v1 prompt of model/tokenizer.py with the real vocabulary: the "▁" before "\n" after the image
    ids = ours.encode_prompt("What is this?", 3, "vicuna_v1")
    img = ids.index(32000)
    assert ids[img - 1:img + 5] == [29871, 32000, 32000, 32000, 29871, 13]
    assert ours.encode_prompt("What is this?", 3, "llava_hf")[4:9] == [29871, 32000, 32000, 32000, 13]


# ------------------------------------------------------------------------------------------- CLIP
def openai_clip_encode(text, ranks, encoder):
    """openai CLIP's simple_tokenizer.encode without ftfy / html.unescape (no tokenizer.json has them): whitespace
    runs to one space, lowercase, the regex, bytes to the printable alphabet, then BPE merging the lowest-ranked
    adjacent pair until none is mergeable, the last symbol of each word carrying "</w>"."""
    byte_char = assets.bytes_to_unicode()
    text = " ".join(text.split()).lower()
    pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                        r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    ids = []
    for word in pat.findall(text):
        sym = [byte_char[b] for b in word.encode("utf-8")]
        sym[-1] += "</w>"
        while len(sym) > 1:
            pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(sym, sym[1:]))]
            best, _ = min(pairs)
            if best == float("inf"):
                break
            a, b = next((sym[i], sym[i + 1]) for r, i in pairs if r == best)
            out, i = [], 0
            while i < len(sym):  # merge every occurrence of the pair, left to right
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            sym = out
        ids += [encoder[s] for s in sym]
    return [49406] + ids + [49407]


SENTENCES = ["a photo of a cat", "A red double-decker BUS parked next to 2 bicycles, in 2024!",
             "It's a dog's life; isn't it? They'll see, we'd've...", "naïve café — déjà vu, Zürich",
             "  multiple   spaces\tand\nnewlines  ", "emoji 🦙🦙 and 中文字符 mixed",
             "x" * 40 + " supercalifragilistic",
             "There is no giraffe in this picture.", "3.14159 != 22/7 ## (approx) [brackets] {braces}"]


def test_clip_tokenizer_matches_openai_and_transformers(clip_dir):
    from transformers import CLIPTokenizer
    tk = HFTokenizer.from_file(os.path.join(clip_dir, "tokenizer.json"))
    assert tk.get_vocab_size() == 49408
    assert tk.encode("a photo of a cat").ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    with open(os.path.join(clip_dir, "vocab.json")) as f:
        encoder = json.load(f)
    with open(os.path.join(clip_dir, "merges.txt")) as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line]
    assert len(encoder) == 49408 and len(merges) == 48894
    ranks = {m: i for i, m in enumerate(merges)}
    hf = CLIPTokenizer(vocab=os.path.join(clip_dir, "vocab.json"), merges=os.path.join(clip_dir, "merges.txt"))
    for s in SENTENCES:
        want = openai_clip_encode(s, ranks, encoder)
        assert tk.encode(s).ids == want, s
        assert hf(s)["input_ids"] == want, s
    assert hf.decode(tk.encode(SENTENCES[1]).ids, skip_special_tokens=True) == \
        "a red double - decker bus parked next to 2 bicycles , in 2 0 2 4 !"


def test_clip_special_ids_through_our_tokenizer(clip_dir, tmp_path):
    ours = Tokenizer.from_pretrained(clip_dir)  # no "<image>" in a CLIP tokenizer: loads, text only
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id, ours.image_token_id) == (49406, 49407, 49407,
                                                                                          49407, None)
    assert ours.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    with pytest.raises(ValueError, match=r"clip/tokenizer\.json: this tokenizer has no '<image>' token"):
        ours.encode_prompt("What is this?", 4)
    # the tokenizer.json alone (no side files): the CLIP names are the fallback defaults
    bare = tmp_path / "bare"
    bare.mkdir()
    with open(os.path.join(clip_dir, "tokenizer.json"), "rb") as f:
        (bare / "tokenizer.json").write_bytes(f.read())
    alone = Tokenizer.from_pretrained(bare)
    assert (alone.bos_id, alone.eos_id, alone.pad_id) == (49406, 49407, 49407)


def test_cached_and_verified(llama_dir, tmp_path, monkeypatch):
    name, version, _ = assets.LLAMA_PKG
    cache = tmp_path / "download"
    cache.mkdir()
    src = os.path.join(OUT, "download", f"{name}-{version}.tgz")
    with open(src, "rb") as f:
        data = f.read()
    (cache / f"{name}-{version}.tgz").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    with pytest.raises(RuntimeError, match="sha256 .* expected ee83014a"):
        assets.llama_tokenizer_dir(str(tmp_path))
    assert (cache / f"{name}-{version}.tgz.bad").exists() and not (tmp_path / "llama").exists()
    # a built directory with the current stamp is not rebuilt (no fetch: the cache is empty now)
    monkeypatch.setattr(assets, "fetch_llama_js", lambda cache: pytest.fail("fetched although built"))
    d = assets.llama_tokenizer_dir(OUT)
    assert d == os.path.join(OUT, "llama")


# ------------------------------------------------------------------------------------------- checkpoints
from rehearsal import checkpoints  # noqa: E402


def test_config_is_the_hub_file_but_depth():
    def flat(d, pre=""):
        return {k2: v2 for k, v in d.items() for k2, v2 in
                (flat(v, f"{pre}{k}.").items() if isinstance(v, dict) else [(pre + k, v)])}
    hub = flat(checkpoints.LLAVA_HF_7B_CONFIG)
    for narrow, extra in ((False, {}), (True, {f"text_config.{k}": v for k, v in checkpoints.NARROW_TEXT.items()}
                                          | {f"vision_config.{k}": v for k, v in checkpoints.NARROW_VISION.items()})):
        got = flat(checkpoints.llava_config(2, narrow))
        changed = {k: v for k, v in got.items() if hub.get(k, "absent") != v}
        assert changed == {"text_config.num_hidden_layers": 2, "vision_config.num_hidden_layers": 2} | extra
        assert hub.keys() <= got.keys()
    assert hub["vision_config.num_hidden_layers"] == 24 and hub["text_config.vocab_size"] == 32064


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    out = tmp_path_factory.mktemp("rehearsal")
    return checkpoints.build_llava(str(out), narrow=True, assets_dir=OUT), \
        checkpoints.build_clip(str(out), narrow=True, assets_dir=OUT)


def test_narrow_llava_in_ours_and_transformers(narrow):
    import torch
    from PIL import Image
    from safetensors import safe_open
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from model import Llava
    d, _ = narrow
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    assert len(shards) > 1 and shards[0].endswith("-of-%05d.safetensors" % len(shards))
    with safe_open(os.path.join(d, shards[0]), framework="pt") as f:
        k = next(iter(f.keys()))
        assert f.get_tensor(k).dtype == torch.float16
    ours = Llava.from_pretrained(d)  # strict
    assert (ours.config.num_image_tokens, ours.config.text.vocab_size, ours.config.vision_layers_used) == (576, 32064,
                                                                                                          1)
    proc = AutoProcessor.from_pretrained(d)
    hf = LlavaForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown here?"}]}]
    text = proc.apply_chat_template(conv, add_generation_prompt=True)
    assert text == "USER: <image>\nWhat is shown here? ASSISTANT:"  # the hub's template: no system sentence
    g = torch.Generator().manual_seed(0)
    img = Image.fromarray((torch.rand(300, 420, 3, generator=g) * 255).to(torch.uint8).numpy())
    inputs = proc(images=img, text=text, return_tensors="pt")
    ids = inputs["input_ids"]
    assert int((ids == 32000).sum()) == 576 and ids[0, 0] == 1
    from model import Tokenizer, load_image
    assert ids[0].tolist() == Tokenizer.from_pretrained(d).encode_prompt("What is shown here?", 576, "llava_hf")
    px = load_image(img, 336, pad=False)  # the hub's CLIPImageProcessor: resize + centre crop, no padding
    assert torch.allclose(inputs["pixel_values"][0], px, atol=1e-5)
    with torch.no_grad():
        a, b = ours(ids, px[None]), hf(**inputs).logits
        assert (a - b).abs().max() <= 1e-3 * b.abs().max()
        mine = ours.generate(ids, px[None], max_new_tokens=5, min_new_tokens=5)
        theirs = hf.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(mine[0], theirs[0, ids.shape[1]:])


def test_narrow_clip_in_ours_and_transformers(narrow):
    import torch
    from PIL import Image
    from transformers import AutoProcessor, CLIPModel as HFCLIP
    from model import CLIPModel, Tokenizer, load_image
    from model.tokenizer import pad_sequences
    _, d = narrow
    ours = CLIPModel.from_pretrained(d)  # strict
    assert ours.config.text.eos_token_id == 2 and float(ours.logit_scale.detach()) == pytest.approx(4.6052, abs=1e-4)
    hf = HFCLIP.from_pretrained(d, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(d)
    texts = ["a photo of a cat on a red sofa", "two dogs"]
    img = Image.fromarray((torch.rand(200, 350, 3, generator=torch.Generator().manual_seed(1)) * 255)
                          .to(torch.uint8).numpy())
    inputs = proc(text=texts, images=img, return_tensors="pt", padding=True)
    tok = Tokenizer.from_pretrained(d)
    rows = [[tok.bos_id] + tok.encode(t) + [tok.eos_id] for t in texts]
    ids, mask = pad_sequences(rows, tok.pad_id, side="right")
    assert torch.equal(ids, inputs["input_ids"]) and torch.equal(mask, inputs["attention_mask"])
    px = load_image(img, 336, pad=False)
    assert torch.allclose(inputs["pixel_values"][0], px, atol=1e-5)
    with torch.no_grad():
        a, b = ours(ids, px[None], mask), hf(**inputs).logits_per_image
    assert a.shape == (1, 2) and torch.allclose(a, b, atol=1e-3)


def test_export_from_the_narrow_checkpoint_copies_its_files(narrow, tmp_path):
    """A base with every side file (the llava-hf layout): the export copies its tokenizer and generation config,
    writes the processor files for how it was trained (padded, vicuna_v1), keeps fp16, bit-identical weights."""
    import types
    import torch
    from model import Llava, Tokenizer
    from train_state import export_model
    d, _ = narrow
    model = Llava.from_pretrained(d).requires_grad_(False)  # fp32 in memory; nothing trained
    cfg = types.SimpleNamespace(init_from=d, lora_rank=0, lora_alpha=0, out_dir=str(tmp_path), fsdp=False,
                                tokenizer="", model_config="", template="vicuna_v1")
    path = export_model(cfg, None, model, Tokenizer.from_pretrained(d), 0)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "generation_config.json"):
        with open(os.path.join(d, name), "rb") as a, open(os.path.join(path, name), "rb") as b:
            assert a.read() == b.read(), name
    with open(os.path.join(path, "preprocessor_config.json")) as f:
        assert json.load(f)["do_pad"] is True  # the hub's centre-crops; LLaVA-1.5 (and this model) trained padded
    with open(os.path.join(path, "chat_template.json")) as f:
        assert "A chat between a curious user" in json.load(f)["chat_template"]
    src, out = Llava.from_pretrained(d, dtype=torch.float16), Llava.from_pretrained(path, dtype=torch.float16)
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "float16"
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), out.state_dict().values()))
