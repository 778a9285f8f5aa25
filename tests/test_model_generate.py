"""Llava.generate beyond greedy parity: EOS stop and padding, seeded temperature / top-p sampling, per-row seeds (an
item's tokens do not depend on its batch), and the top-p cut itself on a hand-made distribution."""
import pytest
import torch

from model import Llava
from model.generate import row_generators, row_seed, sample_next
from model_fixtures import IMAGE_TOKEN, NUM_IMAGE_TOKENS, PAD_TOKEN, make_hf_llava, pixels, prompts

@pytest.fixture(autouse=True)
def _no_grad():
    """Inference-only tests; scoped to this module (a global set_grad_enabled would leak into other files)."""
    with torch.no_grad():
        yield


pytestmark = pytest.mark.usefixtures("one_thread")


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
    seen = torch.bincount(sample_next(logits, 1.0, 0.7, torch.rand(4000, generator=g)), minlength=4)
    assert seen[2] == 0 and seen[3] == 0  # 0.5 < 0.7 <= 0.8: tokens 0 and 1 only
    assert abs(seen[0] / 4000 - 0.625) < 0.03  # renormalised 0.5 / 0.8
    assert sample_next(logits[:2], 0.0, 1.0).tolist() == [0, 0]  # temperature 0 = greedy


def left_pad(rows):
    T = max(len(r) for r in rows)
    return (torch.tensor([[PAD_TOKEN] * (T - len(r)) + r for r in rows]),
            torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows]))


def test_per_row_generators_make_each_item_independent_of_its_batch(model):
    """Four items of different lengths: sampled in one batch of 4, one at a time, and in another order, each item
    gets the same tokens when its generator is seeded from (seed, item id); one shared generator does not."""
    img = [IMAGE_TOKEN] * NUM_IMAGE_TOKENS
    items = {f"q{i}": [1] + list(range(10, 10 + 3 * i)) + img + [99, 7 + i] for i in range(4)}
    px = {k: p for k, p in zip(items, pixels(4))}
    kw = dict(max_new_tokens=10, min_new_tokens=10, temperature=1.0, top_p=0.9)

    def run(keys, generator):
        ids, mask = left_pad([items[k] for k in keys])
        out = model.generate(ids, torch.stack([px[k] for k in keys]), mask, generator=generator, **kw)
        return dict(zip(keys, out.tolist()))

    keys = list(items)
    batched = run(keys, row_generators(7, keys))
    alone = {k: run([k], row_generators(7, [k]))[k] for k in keys}
    shuffled = run(keys[::-1][:3], row_generators(7, keys[::-1][:3]))
    assert batched == alone and all(shuffled[k] == batched[k] for k in shuffled)
    assert run(keys, row_generators(8, keys)) != batched  # the seed matters
    shared = run(keys, torch.Generator().manual_seed(7))
    alone_shared = {k: run([k], torch.Generator().manual_seed(7))[k] for k in keys}
    assert shared != alone_shared  # why per-row generators exist: one stream's draws depend on the batch
    assert row_seed(0, "q1") == row_seed(0, "q1") != row_seed(0, "q2") and 0 <= row_seed(5, "x") < 2 ** 63
    with pytest.raises(ValueError, match="3 per-row generators for 4 rows"):
        run(keys, row_generators(7, keys[:3]))


def test_samples_share_one_prefill_and_give_the_repeated_prompt_tokens(model, monkeypatch):
    """samples=3: each prompt (and image) is run once and its three rows share its cached keys; the tokens equal
    those of the prompt repeated three times (three prefills, three full caches), row for row."""
    ids, mask = prompts()
    px = pixels(2)
    keys = [f"{i}#{k}" for i in range(2) for k in range(3)]
    kw = dict(max_new_tokens=8, min_new_tokens=8, temperature=1.0, top_p=0.95)
    rep = torch.arange(2).repeat_interleave(3)
    repeated = model.generate(ids[rep], px[rep], mask[rep], generator=row_generators(1, keys), **kw)
    rows = []
    real = model.vision_tower.forward
    monkeypatch.setattr(model.vision_tower, "forward", lambda p, **k: rows.append(len(p)) or real(p, **k))
    shared = model.generate(ids, px, mask, samples=3, generator=row_generators(1, keys), **kw)
    assert rows == [2] and torch.equal(shared, repeated)
    assert len(set(map(tuple, shared.tolist()))) > 2  # the samples of one prompt differ
    greedy = model.generate(ids, px, mask, samples=2, max_new_tokens=8, min_new_tokens=8)  # (4, 8)
    one = model.generate(ids, px, mask, max_new_tokens=8, min_new_tokens=8)  # (2, 8)
    assert torch.equal(greedy[::2], one) and torch.equal(greedy[1::2], one)


def test_head_rows_past_the_tokenizer_are_never_generated(model):
    """llava-hf's head has 32,064 rows for 32,002 tokens: the padding rows are no token a tokenizer can decode, so a
    sampler must never pick one (the full-width rehearsal's random model did: clip-rank died in decode)."""
    ids, mask = prompts()
    px = pixels(2)
    V = model.lm_head.weight.shape[0]
    head = model.lm_head.weight.clone()
    try:
        model.lm_head.weight[V - 8:] = 0.0
        model.lm_head.weight[V - 8:, 0] = 1e4  # the last 8 rows win whenever the state's first feature is positive
        free = model.generate(ids, px, mask, max_new_tokens=16, min_new_tokens=16, temperature=1.0,
                              generator=torch.Generator().manual_seed(0))
        kept = model.generate(ids, px, mask, max_new_tokens=16, min_new_tokens=16, temperature=1.0,
                              generator=torch.Generator().manual_seed(0), vocab_size=V - 8)
    finally:
        model.lm_head.weight.copy_(head)
    assert (free >= V - 8).any() and not (kept >= V - 8).any()
