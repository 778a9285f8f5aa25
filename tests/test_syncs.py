"""Host syncs (issue 32 item 9) and causal attention for right-padded batches (item 10): bench/syncs.py's CPU
counter itself, the model's passes without a sync, and the same numbers as the checked / masked paths."""
import threading

import pytest
import torch
import torch.nn.functional as F

from bench.syncs import SyncCounter, counted
from model import Llava, LlavaConfig, TextConfig, VisionConfig
from model.logprob import sequence_logprobs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    vis = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8)
    text = TextConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=3)
    torch.manual_seed(0)
    return Llava(LlavaConfig(vision=vis, text=text, image_token_id=119, pad_token_id=3))


def right_padded(m, lengths):
    """Right-padded rows, each BOS + the image's tokens + text: ids, mask (B, T), pixels (B, 3, S, S)."""
    g = torch.Generator().manual_seed(1)
    n_img, T = m.config.num_image_tokens, max(lengths)
    ids = torch.full((len(lengths), T), 3)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        text = torch.randint(4, 119, (n - 1 - n_img,), generator=g)
        ids[i, :n] = torch.cat([torch.tensor([1] + [119] * n_img), text])
        mask[i, :n] = 1
    return ids, mask, torch.randn(len(lengths), 3, 32, 32, generator=g)


def test_counter_counts_what_would_wait_on_this_thread_only():
    x = torch.arange(6.0)
    with SyncCounter() as c:
        x.sum().item(), bool(x[0]), float(x.max()), x.tolist(), x.nonzero(), x[x > 2], torch.where(x > 1)
        x.to("cpu"), x.to("cpu", non_blocking=True), torch.tensor([1, 2], device="cpu"), x.masked_fill(x > 2, 0)
        t = threading.Thread(target=lambda: x.sum().item())  # a data thread's reads are not the step's
        t.start()
        t.join()
    kinds = [s.split(" at ")[0] for s in c.calls]
    assert kinds == ["aten._local_scalar_dense.default"] * 3 + ["Tensor.tolist", "aten.nonzero.default",
                                                                 "aten.index.Tensor (boolean mask)",
                                                                 "aten.nonzero.default", "Tensor.to (blocking)",
                                                                 "torch.tensor(device=)"], c.calls
    assert all(s.split(" at ")[1].startswith("test_syncs.py:") for s in c.calls)  # the line that asked


def test_model_passes_without_a_sync_give_the_checked_and_masked_numbers(tiny):
    """hidden_states on a right-padded batch with attention_mask=None (causal, as training passes it) and the
    image-token check off: no sync, and the real positions' states equal the masked, checked call's."""
    ids, mask, px = right_padded(tiny, [24, 21, 18])
    with torch.no_grad():
        with SyncCounter() as checked:
            ref = tiny.hidden_states(ids, px, mask)
        calls = []
        real = F.scaled_dot_product_attention
        tiny.check_image_tokens = False
        try:
            with SyncCounter() as free:
                torch.nn.functional.scaled_dot_product_attention = lambda *a, **k: calls.append(k) or real(*a, **k)
                h = tiny.hidden_states(ids, px, None)
        finally:
            torch.nn.functional.scaled_dot_product_attention = real
            tiny.check_image_tokens = True
    assert checked.count == 1 and free.count == 0, (checked.calls, free.calls)
    calls = [k for k in calls if "enable_gqa" in k]  # the decoder's (the CLIP tower's are not causal)
    assert len(calls) == 2 and all(k["attn_mask"] is None and k["is_causal"] for k in calls)  # flash-eligible
    real_pos = mask.bool()
    assert torch.allclose(h[real_pos], ref[real_pos], atol=1e-5)


def test_sequence_logprobs_with_known_rows_reads_nothing_back():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 16, generator=g, requires_grad=True)
    w = torch.randn(700, 16, generator=g, requires_grad=True)
    t = torch.full((40,), -100)
    rows = torch.tensor([3, 4, 5, 17, 30, 31])
    t[rows] = torch.randint(0, 700, (6,), generator=g)
    ref = sequence_logprobs(h, w, t, block_cols=256)
    ref.sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with SyncCounter() as c:
        lp = sequence_logprobs(h, w, t, block_cols=256, rows=rows)
        lp.sum().backward()
    assert c.count == 0, c.calls
    assert torch.equal(lp, ref) and torch.equal(h.grad, gh) and torch.equal(w.grad, gw)


@pytest.fixture
def run_setup(train_world):
    """train.py's tests' toy world, tiny checkpoint and rule-injected pairs (tests/conftest.py)."""
    return train_world


# per micro-batch of 2 pairs: (tower calls with their image counts, decoder passes); before issue 32 item 11 DPO ran
# the tower 2x on 4 images (reference, policy: chosen and rejected), POVID-each 4x (+ 2 noisy passes of 2) with 4
# decoder passes
PASSES = {"dpo": ([2], 2), "povid": ([2, 2], 3), "sft": ([2], 1)}


@pytest.mark.parametrize("mode", ["dpo", "povid", "sft"])
def test_training_step_never_waits_for_the_device_between_log_steps(run_setup, tmp_path, monkeypatch, mode):
    """train.py's loop, 4 steps, logging every 2nd: each step (batches made by the Prefetch thread) asks the device
    for nothing; each settle() (log steps: 0, 2 and the last) reads once. The decoder attends causally without a
    mask (right-padded rows). The frozen tower runs once per image per micro-batch, and POVID's reference (noise
    tokens from each) is one decoder pass. The optimizer is fused AdamW here: train.py's foreach AdamW reads its
    step counters, host tensors under CUDA too, which this CPU counter cannot tell apart from device reads."""
    import train
    from model.clip import CLIPVisionTransformer
    from model.llama import LlamaModel
    real_opt, real_step, real_settle = train.make_optimizer, train.Run.step, train.Run.settle

    def fused_opt(cfg, model):
        groups = [{"params": g["params"], "base_lr": g["base_lr"]} for g in real_opt(cfg, model).param_groups]
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    steps, settles, attn = [], [], []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(train, "make_optimizer", fused_opt)
    monkeypatch.setattr(train.Run, "step", counted(real_step, steps))
    monkeypatch.setattr(train.Run, "settle", counted(real_settle, settles))
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: attn.append(k) or sdpa(*a, **k))
    tower, decoder_calls = [], []
    real_tower, real_decoder = CLIPVisionTransformer.forward, LlamaModel.forward
    monkeypatch.setattr(CLIPVisionTransformer, "forward", lambda self, px, **k: tower.append(len(px)) or real_tower(
        self, px, **k))
    monkeypatch.setattr(LlamaModel, "forward", lambda self, *a, **k: decoder_calls.append(1) or real_decoder(
        self, *a, **k))
    data = run_setup / ("w/train.json" if mode == "sft" else "pairs.jsonl")
    train.main([f"--mode={mode}", f"--data={data}", f"--init_from={run_setup}/ckpt", f"--out_dir={tmp_path}",
                "--max_steps=4", "--batch_size=4", "--micro_batch_size=2", "--log_every=2", "--lora_rank=4"]
               + (["--noise_tokens_from=each"] if mode == "povid" else []))
    images, passes = PASSES[mode]
    assert tower == images * 8 and len(decoder_calls) == passes * 8  # 4 steps x 2 micro-batches
    assert steps == [[]] * 4, steps
    assert [len(c) for c in settles] == [1, 1, 1], settles
    decoder = [k for k in attn if "enable_gqa" in k]
    assert decoder and all(k["attn_mask"] is None and k["is_causal"] for k in decoder)


def test_mfu_counts_the_frozen_tower_once_per_image(tiny):
    """POVID (noise from each), 2 pairs: the tower ran on 2 clean and 2 noisy images, not on 4 + 4 + 2 + 2."""
    from train_mfu import estimate_flops, model_flops
    mc, work = tiny.config, {"tokens": 120.0, "tokens_x_len": 120.0 * 60, "images": 4.0, "targets": 30.0}
    one_image = model_flops(mc, 0, 0, 0, 60, 1, 0, False)
    per_pass = estimate_flops(mc, 1000, 100, work, True, 2)
    shared = estimate_flops(mc, 1000, 100, work, True, 2, shared_features=True)
    assert one_image > 0 and per_pass - shared == pytest.approx(8 * one_image)
