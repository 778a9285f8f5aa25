"""Llava.generate beyond greedy parity: EOS stop and padding, seeded temperature / top-p sampling, and the top-p
cut itself on a hand-made distribution."""
import pytest
import torch

from model import Llava
from model.generate import sample_next
from model_fixtures import PAD_TOKEN, make_hf_llava, pixels, prompts



@pytest.fixture(autouse=True)
def _no_grad():
    """Inference-only tests; scoped to this module (a global set_grad_enabled would leak into other files)."""
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    make_hf_llava(str(d), kv_heads=2)
    return Llava.from_pretrained(d)


def test_eos_stops_row_and_pads(model):
    ids, mask = prompts()
    px = pixels(2)
    greedy = model.generate(ids, px, mask, max_new_tokens=8, min_new_tokens=8)
    eos = int(greedy[0, 2])  # make one of row 0's tokens the EOS
    k = int((greedy[0] == eos).nonzero()[0])  # where it first appears
    out = model.generate(ids, px, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=PAD_TOKEN)
    assert torch.equal(out[0, :k + 1], greedy[0, :k + 1]) and (out[0, k + 1:] == PAD_TOKEN).all()
    first = [int((r == eos).nonzero()[0]) if (r == eos).any() else None for r in greedy]
    assert out.shape[1] == (8 if None in first else max(first) + 1)  # stops once every row has ended


def test_all_rows_done_stops_early(model):
    ids, mask = prompts()
    px = pixels(2)
    greedy = model.generate(ids[:1], px[:1], mask[:1], max_new_tokens=4, min_new_tokens=4)
    out = model.generate(ids[:1], px[:1], mask[:1], max_new_tokens=16, eos_token_id=int(greedy[0, 0]))
    assert out.tolist() == [[int(greedy[0, 0])]]


def test_sampling_is_seeded(model):
    ids, mask = prompts()
    px = pixels(2)

    def run(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return model.generate(ids, px, mask, max_new_tokens=12, min_new_tokens=12, generator=g, **kw)

    a, b, c = run(0, temperature=1.0, top_p=0.95), run(0, temperature=1.0, top_p=0.95), run(1, temperature=1.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.generate(ids, px, mask, max_new_tokens=12, min_new_tokens=12)
    assert torch.equal(run(3, temperature=1.0, top_p=1e-6), greedy)  # a nucleus of one token is argmax


def test_top_p_keeps_smallest_prefix_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    seen = torch.bincount(sample_next(logits, 1.0, 0.7, g), minlength=4)
    assert seen[2] == 0 and seen[3] == 0  # 0.5 < 0.7 <= 0.8: tokens 0 and 1 only
    assert abs(seen[0] / 4000 - 0.625) < 0.03  # renormalised 0.5 / 0.8
    assert sample_next(logits[:2], 0.0, 1.0).tolist() == [0, 0]  # temperature 0 = greedy
