"""Parity of model/ against transformers (test-only reference) on tiny random checkpoints in the public layouts:
llava-hf new prefixes, legacy prefixes, sharded, liuhaotian + separate CLIP dir; MHA and GQA.
fp32 logits within 1e-4, greedy 16-token continuations identical, save_pretrained round trips."""
import json
import os

import pytest
import torch

from model import Llava
from model_fixtures import (EOS, NUM_IMAGE_TOKENS, PAD_TOKEN, make_hf_llava, make_liuhaotian, pixels, prompts,
                            write_prefixes)



@pytest.fixture(autouse=True)
def _no_grad():
    """Inference-only tests; scoped to this module (a global set_grad_enabled would leak into other files)."""
    with torch.no_grad():
        yield


def hf_logits(hf, ids, mask, px):
    # transformers' forward counts positions from 0 even on padding; generate() uses cumsum(mask) - 1 as we do
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return hf(input_ids=ids, pixel_values=px, attention_mask=mask, position_ids=pos).logits


def max_diff(ours, hf):
    ids, mask = prompts()
    px = pixels(2)
    a, b = ours(ids, px, mask), hf_logits(hf, ids, mask, px)
    padded = (a - b).abs()[mask.bool()].max().item()  # padded positions are never read
    # row 0 is the longest: alone it has no padding, which takes the mask-free causal path
    alone = (ours(ids[:1], px[:1]) - hf(input_ids=ids[:1], pixel_values=px[:1]).logits).abs().max().item()
    return max(padded, alone)


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def hf_dir(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"hf_kv{request.param}")
    return make_hf_llava(str(d), kv_heads=request.param), d


def test_transformers_5_save(hf_dir):
    hf, d = hf_dir
    assert max_diff(Llava.from_pretrained(d), hf) <= 1e-4


def test_legacy_prefixes(hf_dir, tmp_path):
    hf, _ = hf_dir
    keys = write_prefixes(hf, str(tmp_path), "legacy")
    assert "language_model.lm_head.weight" in keys and "vision_tower.vision_model.pre_layrnorm.weight" in keys
    assert max_diff(Llava.from_pretrained(tmp_path), hf) <= 1e-4


def test_new_prefixes_4_52(hf_dir, tmp_path):
    hf, _ = hf_dir
    keys = write_prefixes(hf, str(tmp_path), "new")
    assert "lm_head.weight" in keys and "model.vision_tower.vision_model.pre_layrnorm.weight" in keys
    assert max_diff(Llava.from_pretrained(tmp_path), hf) <= 1e-4


def test_sharded(hf_dir, tmp_path):
    hf, _ = hf_dir
    hf.save_pretrained(tmp_path, max_shard_size="150KB")
    with open(tmp_path / "model.safetensors.index.json") as f:
        assert len(set(json.load(f)["weight_map"].values())) > 1
    assert max_diff(Llava.from_pretrained(tmp_path), hf) <= 1e-4


def test_liuhaotian_with_clip_dir(hf_dir, tmp_path):
    hf, _ = hf_dir
    make_liuhaotian(hf, str(tmp_path / "llava"), str(tmp_path / "clip"))
    ours = Llava.from_pretrained(tmp_path / "llava", vision_tower=tmp_path / "clip")
    assert ours.config.vision_feature_layer == -2 and ours.config.num_image_tokens == NUM_IMAGE_TOKENS
    assert max_diff(ours, hf) <= 1e-4


def test_hidden_states_then_lm_head_is_forward(hf_dir):
    _, d = hf_dir
    m = Llava.from_pretrained(d)
    ids, mask = prompts()
    px = pixels(2)
    assert torch.equal(m.lm_head(m.hidden_states(ids, px, mask)), m(ids, px, mask))


def test_greedy_generation_matches(hf_dir):
    hf, d = hf_dir
    ours = Llava.from_pretrained(d)
    ids, mask = prompts()
    px = pixels(2)
    mine = ours.generate(ids, px, mask, max_new_tokens=16, min_new_tokens=16)
    theirs = hf.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=16, min_new_tokens=16,
                         do_sample=False, pad_token_id=PAD_TOKEN, eos_token_id=EOS)
    assert mine.shape == (2, 16)
    assert torch.equal(mine, theirs[:, ids.shape[1]:])
    # the left-padded row continues exactly as it does alone
    start = int(mask[1].argmax())
    alone = ours.generate(ids[1:, start:], px[1:], max_new_tokens=16, min_new_tokens=16)
    assert torch.equal(alone[0], mine[1])


def test_round_trip(hf_dir, tmp_path):
    from transformers import LlavaForConditionalGeneration
    hf, d = hf_dir
    ours = Llava.from_pretrained(d)
    ours.save_pretrained(tmp_path / "b")
    with open(tmp_path / "b" / "config.json") as f:
        cfg = json.load(f)
    assert cfg["text_config"]["rms_norm_eps"] == 1e-5 and cfg["text_config"]["rope_theta"] == 20000.0 and cfg["vision_config"]["hidden_act"] == "quick_gelu"
    back = LlavaForConditionalGeneration.from_pretrained(tmp_path / "b").eval()
    ids, mask = prompts()
    px = pixels(2)
    assert torch.equal(hf_logits(back, ids, mask, px), hf_logits(hf, ids, mask, px))
    again = Llava.from_pretrained(tmp_path / "b")
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ours.save_pretrained(tmp_path / "c", max_shard_bytes=100_000)  # sharded save
    assert os.path.exists(tmp_path / "c" / "model.safetensors.index.json")
    assert not os.path.exists(tmp_path / "c" / "model.safetensors")
    c = Llava.from_pretrained(tmp_path / "c").state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)
    back = LlavaForConditionalGeneration.from_pretrained(tmp_path / "c").eval()
    assert torch.equal(hf_logits(back, ids, mask, px), hf_logits(hf, ids, mask, px))
