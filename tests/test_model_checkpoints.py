"""Checkpoint formats and bad input: liuhaotian pickles (weights_only), fp16 weights into fp32/bf16, and one
test per error (missing config / weights / key, unknown key, shape mismatch, image-token count)."""
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import Llava, LlavaConfig
from model_fixtures import IMAGE_TOKEN, NUM_IMAGE_TOKENS, make_hf_llava, make_liuhaotian, pixels, prompts



@pytest.fixture(autouse=True)
def _no_grad():
    """Inference-only tests; scoped to this module (a global set_grad_enabled would leak into other files)."""
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    return make_hf_llava(str(d), kv_heads=2), d


def copy_dir(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    return dst


def edit_weights(d, fn):
    f = os.path.join(d, "model.safetensors")
    sd = load_file(f)
    fn(sd)
    save_file(sd, f)


def test_liuhaotian_fp16_bin_into_fp32_and_bf16(hf_dir, tmp_path):
    hf, _ = hf_dir
    make_liuhaotian(hf, str(tmp_path / "llava"), str(tmp_path / "clip"), bin_format=True, dtype=torch.float16)
    assert os.path.exists(tmp_path / "llava" / "pytorch_model.bin")
    want = hf.lm_head.weight.half()
    for dtype in (torch.float32, torch.bfloat16):
        m = Llava.from_pretrained(tmp_path / "llava", dtype=dtype, vision_tower=tmp_path / "clip")
        assert all(p.dtype == dtype for p in m.parameters())
        assert torch.equal(m.lm_head.weight, want.to(dtype))
    ids, mask = prompts()
    assert torch.isfinite(m(ids, pixels(2).bfloat16(), mask)).all()  # bf16 forward runs end to end


def test_pickle_with_code_is_refused(hf_dir, tmp_path):
    hf, _ = hf_dir
    d = tmp_path / "llava"
    make_liuhaotian(hf, str(d), str(tmp_path / "clip"), bin_format=True)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    sd["evil"] = pickle.loads  # a callable: only loadable by unpickling arbitrary globals
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin: not a plain tensor pickle"):
        Llava.from_pretrained(d, vision_tower=tmp_path / "clip")


def test_liuhaotian_without_vision_tower(hf_dir, tmp_path):
    hf, _ = hf_dir
    make_liuhaotian(hf, str(tmp_path / "llava"), str(tmp_path / "clip"))
    with pytest.raises(ValueError, match="vision_tower="):
        Llava.from_pretrained(tmp_path / "llava")


def test_liuhaotian_config_fields(hf_dir, tmp_path):
    hf, _ = hf_dir
    make_liuhaotian(hf, str(tmp_path / "llava"), str(tmp_path / "clip"))
    c = LlavaConfig.from_dir(tmp_path / "llava")
    assert (c.vision_feature_layer, c.vision_feature_select_strategy, c.image_aspect_ratio) == (-2, "default", "pad")
    assert c.text.rms_norm_eps == hf.config.text_config.rms_norm_eps and c.text.rope_theta == 20000.0


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Llava.from_pretrained(tmp_path)


def test_missing_weights(hf_dir, tmp_path):
    _, d = hf_dir
    with open(d / "config.json") as f, open(tmp_path / "config.json", "w") as g:
        g.write(f.read())
    with pytest.raises(FileNotFoundError, match="no weights in"):
        Llava.from_pretrained(tmp_path)


def test_missing_shard(hf_dir, tmp_path):
    hf, _ = hf_dir
    hf.save_pretrained(tmp_path, max_shard_size="150KB")
    with open(tmp_path / "model.safetensors.index.json") as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[-1]
    os.remove(tmp_path / shard)
    with pytest.raises(FileNotFoundError, match=shard):
        Llava.from_pretrained(tmp_path)


def test_unknown_key(hf_dir, tmp_path):
    d = copy_dir(hf_dir[1], tmp_path)
    edit_weights(d, lambda sd: sd.__setitem__("language_model.model.layers.0.mlp.extra.weight", torch.zeros(2)))
    with pytest.raises(KeyError, match=r"unexpected key.*layers\.0\.mlp\.extra\.weight"):
        Llava.from_pretrained(d)


def test_missing_key(hf_dir, tmp_path):
    d = copy_dir(hf_dir[1], tmp_path)
    edit_weights(d, lambda sd: sd.pop("language_model.model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(KeyError, match=r"missing.*language_model\.layers\.1\.mlp\.up_proj\.weight"):
        Llava.from_pretrained(d)


def test_shape_mismatch(hf_dir, tmp_path):
    d = copy_dir(hf_dir[1], tmp_path)
    edit_weights(d, lambda sd: sd.__setitem__("language_model.model.norm.weight", torch.ones(65)))
    with pytest.raises(ValueError, match=r"shape mismatch for 'language_model\.model\.norm\.weight'.*\(65,\).*\(64,\)"):
        Llava.from_pretrained(d)


def test_key_filled_twice(hf_dir, tmp_path):
    d = copy_dir(hf_dir[1], tmp_path)
    edit_weights(d, lambda sd: sd.__setitem__("model.language_model.norm.weight",
                                              sd["language_model.model.norm.weight"].clone()))
    with pytest.raises(ValueError, match="already filled"):
        Llava.from_pretrained(d)


def test_image_token_count_mismatch(hf_dir):
    m = Llava.from_pretrained(hf_dir[1])
    ids, mask = prompts()  # one image per row: 2 x 16 image tokens
    with pytest.raises(ValueError, match=f"32 image tokens.*3 x {NUM_IMAGE_TOKENS} = 48 features"):
        m(ids, pixels(3), mask)
    lost = ids.clone()
    lost[0, int((ids[0] == IMAGE_TOKEN).nonzero()[0])] = 5  # one image token overwritten by text
    with pytest.raises(ValueError, match="image tokens and image features do not match"):
        m(lost, pixels(2), mask)


def test_pixels_without_image_tokens(hf_dir):
    m = Llava.from_pretrained(hf_dir[1])
    ids = torch.tensor([[1, 5, 6, 7]])
    with pytest.raises(ValueError, match="contain no image token"):
        m(ids, pixels(1))
    with pytest.raises(ValueError, match="no pixel_values"):
        m(torch.tensor([[1, IMAGE_TOKEN, 5]]))
    assert m(ids).shape == (1, 4, 300)  # text-only input is fine


def test_broken_config_json(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava",')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        Llava.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------- model.convert
def word_tokenizer(d, n, image_id, pad_id):
    """A word-level tokenizer.json with n ids: <unk> <s> </s> at 0-2, <image> / <pad> at the given ids."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, models, pre_tokenizers
    names = {0: "<unk>", 1: "<s>", 2: "</s>", image_id: "<image>", pad_id: "<pad>"}
    tk = HFTokenizer(models.WordLevel(vocab={names.get(i, f"w{i}"): i for i in range(n)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in names.values()])
    os.makedirs(d, exist_ok=True)
    tk.save(os.path.join(d, "tokenizer.json"))
    return d


def hf_logits(hf, ids, mask, px):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return hf(input_ids=ids, pixel_values=px, attention_mask=mask, position_ids=pos).logits


def test_convert_liuhaotian_to_llava_hf(hf_dir, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from model.convert import convert, main
    hf, _ = hf_dir
    src, clip = tmp_path / "liuhaotian", tmp_path / "clip"
    make_liuhaotian(hf, str(src), str(clip), bin_format=True, dtype=torch.float16)
    with pytest.raises(SystemExit, match="liuhaotian has no tokenizer.json .* Pass --tokenizer DIR"):
        main(["--src", str(src), "--vision-tower", str(clip), "--out", str(tmp_path / "x")])
    tok = word_tokenizer(str(tmp_path / "tok"), 300, IMAGE_TOKEN, 297)
    done = convert(src, clip, tmp_path / "out", tokenizer=tok)
    assert done["tokenizer.json"].startswith("copied") and done["preprocessor_config.json"] == "written"
    out = tmp_path / "out"
    with open(out / "config.json") as f:
        cfg = json.load(f)
    assert (cfg["torch_dtype"], cfg["image_token_index"], cfg["image_aspect_ratio"]) == ("float16", IMAGE_TOKEN, "pad")
    with open(out / "preprocessor_config.json") as f:
        assert json.load(f)["do_pad"] is True  # LLaVA-1.5 trained on padded images
    ours = Llava.from_pretrained(src, vision_tower=clip)  # fp16 weights read into fp32 on both sides
    theirs = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = prompts()
    px = pixels(2)
    assert (ours(ids, px, mask) - hf_logits(theirs, ids, mask, px)).abs()[mask.bool()].max() <= 1e-4
    assert AutoProcessor.from_pretrained(out).image_processor.do_pad is True


def test_convert_image_id_past_the_head(hf_dir, tmp_path):
    """The real liuhaotian case in miniature: no image_token_index in the config, so the image id is the vocab size
    (300 of 300 rows) and <pad> lies past the head too. Kept as is, pad falls back to <unk>; --pad-vocab grows the
    table for transformers without changing a greedy token."""
    from transformers import LlavaForConditionalGeneration
    from model.convert import convert
    hf, _ = hf_dir
    src, clip = tmp_path / "liuhaotian", tmp_path / "clip"
    make_liuhaotian(hf, str(src), str(clip), dtype=torch.float16)
    with open(src / "config.json") as f:
        cfg = json.load(f)
    del cfg["image_token_index"]
    (src / "config.json").write_text(json.dumps(cfg))
    tok = word_tokenizer(str(tmp_path / "tok"), 302, 300, 301)
    convert(src, clip, tmp_path / "keep", tokenizer=tok)
    with open(tmp_path / "keep" / "tokenizer_config.json") as f:
        assert json.load(f)["pad_token"] == "<unk>"
    with open(tmp_path / "keep" / "generation_config.json") as f:
        assert json.load(f)["pad_token_id"] == 0
    kept = Llava.from_pretrained(tmp_path / "keep")
    assert (kept.config.text.vocab_size, kept.config.image_token_id, kept.config.pad_token_id) == (300, 300, 0)
    ours = Llava.from_pretrained(src, vision_tower=clip)
    img = [300] * NUM_IMAGE_TOKENS
    ids = torch.tensor([[1, 17, 42] + img + [99, 7, 250]])
    px = pixels(1)
    want = ours(ids, px)
    assert torch.equal(kept(ids, px), want)
    convert(src, clip, tmp_path / "grown", tokenizer=tok, pad_to=320)
    theirs = LlavaForConditionalGeneration.from_pretrained(tmp_path / "grown", dtype=torch.float32).eval()
    got = theirs(input_ids=ids, pixel_values=px).logits
    assert got.shape[-1] == 320 and (got[..., :300] - want).abs().max() <= 1e-4
    assert (got[..., 300:] < got[..., :300].max(-1, keepdim=True).values).all()  # new tokens never the argmax
    grown = Llava.from_pretrained(tmp_path / "grown")
    assert torch.equal(grown.generate(ids, px, max_new_tokens=8), ours.generate(ids, px, max_new_tokens=8))
