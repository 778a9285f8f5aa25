"""dpo_fused.py: the fused preference loss equals the unfused composition train.py runs (sequence_logprobs ->
sequence sums -> dpo_loss / povid_loss + rpo_alpha x chosen_nll), values and both gradients at fp32 1e-5, and a DPO
optimizer step with it equals the step without it.

Each value test runs the torch path and the Triton path ("impl"); without a GPU the Triton kernels run on CPU tensors
under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton)."""
import pytest
import torch

import dpo_fused as F
from dpo import chosen_nll, dpo_loss, povid_loss, sequence_sums
from train import Config, preference_loss_fn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
P, T, D, V = 4, 13, 24, 101


@pytest.fixture(params=["torch", "triton"])
def impl(request, monkeypatch):
    """use_triton for the function under test; the Triton path with 64-column row blocks (V = 101: two per row, the
    last partial)."""
    if request.param == "torch":
        return False
    monkeypatch.setattr(_triton_path(), "ROW_BLOCK", 64)
    return True


def case(seed=0, dtype=torch.float32):
    """P pairs of uneven lengths: prompts of 2..5 tokens, responses of 1..9 tokens, right padding (-100), noise-
    triggered targets on the chosen rows (some positions unscored), and reference log-probs near the policy's."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2 * P, T, D, generator=g).to(DEVICE, dtype).requires_grad_()
    w = (torch.randn(V, D, generator=g) * 0.3).to(DEVICE, dtype)
    labels = torch.full((2 * P, T), -100)
    for b in range(2 * P):
        start = 2 + b % 4
        end = min(T, start + 1 + (3 * b + 1) % 9)
        labels[b, start:end] = torch.randint(0, V, (end - start,), generator=g)
    noise = torch.where(labels[:P] != -100, torch.randint(0, V, (P, T), generator=g), -100)
    noise[0, 4] = -100  # a chosen position scored without a noise token
    noise[1] = torch.where(labels[1] != -100, labels[1], -100)  # greedy == chosen: both targets hit one column
    ref = (torch.randn(3 * P, generator=g) - 20).to(DEVICE)
    return h, w, labels.to(DEVICE), noise.to(DEVICE), ref


def unfused(h, w, labels, noise, ref, kind, beta=0.1, eps=0.0, alpha=0.0):
    """train.py's composition, written out as train.py writes it."""
    lp = sequence_sums(h, w, labels)  # (2P,)
    pc, pr = lp[:P], lp[P:]
    if kind == "povid":
        pn = sequence_sums(h[:P], w, noise)
        losses, _, _ = povid_loss(pc, pr, pn, ref[:P], ref[P:2 * P], ref[2 * P:], beta, (0.3, 0.7))
    else:
        losses, _, _ = dpo_loss(pc, pr, ref[:P], ref[P:2 * P], beta, kind, eps)
    if alpha:
        losses = losses + alpha * chosen_nll(pc, (labels[:P, 1:] != -100).sum(1))
    return losses.sum()


def fused(h, w, labels, noise, ref, kind, beta=0.1, eps=0.0, alpha=0.0, **kw):
    if kind == "povid":
        rows, tgt, seq = F.pack(h, labels, noise)
        groups, fn = F.povid_groups(P, DEVICE), loss_fn("povid", beta=beta, povid_weight_injected=0.3,
                                                        povid_weight_noise=0.7, rpo_alpha=alpha)
        return F.fused_preference_loss(rows, w, tgt, seq, groups, ref, fn, **kw)
    rows, tgt, seq = F.pack(h, labels)
    fn = loss_fn("dpo", beta=beta, loss_type=kind, label_smoothing=eps, rpo_alpha=alpha)
    return F.fused_preference_loss(rows, w, tgt, seq, F.pair_groups(P, DEVICE), ref[:2 * P], fn, **kw)


def loss_fn(objective, **kw):
    """train.py's loss closure (dpo.py's losses) for these settings."""
    return preference_loss_fn(Config(**kw), objective)


def grads(fn, h, w, trainable):
    h = h.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_(trainable)
    out = fn(h, w)
    loss = out[0] if isinstance(out, tuple) else out
    (loss * 0.37).backward()  # a non-unit upstream gradient: backward must scale
    return loss.detach(), h.grad, w.grad


def assert_close(ours, ref, atol=1e-5, rtol=1e-5):
    for a, b in zip(ours, ref):
        if b is None:
            assert a is None
        else:
            assert torch.allclose(a, b, atol=atol, rtol=rtol), (a - b).abs().max()


LOSSES = [("sigmoid", 0.0, 0.0), ("sigmoid", 0.1, 0.0), ("hinge", 0.0, 0.0), ("ipo", 0.0, 0.0),
          ("robust", 0.1, 0.0), ("povid", 0.0, 0.0), ("sigmoid", 0.0, 1.5), ("povid", 0.0, 0.5)]


def _triton_path():
    """The Triton path with small row blocks, or a skip where triton is missing."""
    try:
        from model import logprob_triton as lt
        import dpo_fused_triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed (it is in requirements-dev.txt)")
    return lt


@pytest.mark.parametrize("kind,eps,alpha", LOSSES)
@pytest.mark.parametrize("trainable", [True, False])
@pytest.mark.parametrize("budget_rows", [None, 11])  # None: one chunk; 11: several uneven chunks and a fallback
def test_matches_unfused(kind, eps, alpha, trainable, budget_rows):
    """The torch path, every loss."""
    check_case(False, kind, eps, alpha, trainable, budget_rows)


@pytest.mark.parametrize("kind,eps,alpha", [("sigmoid", 0.1, 1.5), ("povid", 0.0, 0.5)])
@pytest.mark.parametrize("trainable", [True, False])
@pytest.mark.parametrize("budget_rows", [None, 11])
def test_triton_matches_unfused(monkeypatch, kind, eps, alpha, trainable, budget_rows):
    """The Triton path: the loss enters its kernels only through c = dLoss / dlog p, so one DPO loss and POVID's
    (two target sets per row) cover it; the torch test above covers every loss type."""
    monkeypatch.setattr(_triton_path(), "ROW_BLOCK", 64)  # V = 101: two blocks per row, the last partial
    check_case(True, kind, eps, alpha, trainable, budget_rows)


def check_case(impl, kind, eps, alpha, trainable, budget_rows):
    h, w, labels, noise, ref = case()
    beta = 0.5 if kind == "hinge" else 0.1  # hinge: z = 0.5 * margin stays inside the kink for some pairs, not all
    kw = dict(use_triton=impl, budget_bytes=budget_rows and budget_rows * V * 4)
    ours = grads(lambda a, b: fused(a, b, labels, noise, ref, kind, beta, eps, alpha, **kw), h, w, trainable)
    want = grads(lambda a, b: unfused(a, b, labels, noise, ref, kind, beta, eps, alpha), h, w, trainable)
    assert_close(ours, want)
    assert ours[1].abs().sum() > 0 and (not trainable or ours[2].abs().sum() > 0)


def test_chunk_plan_uneven_with_fallback():
    """The budget above (11 rows) splits the POVID batch into chunks of whole groups of uneven sizes, and the group
    whose rows alone exceed it goes to the recompute path; pi equals the unfused sums exactly enough."""
    h, w, labels, noise, ref = case()
    rows, tgt, seq = F.pack(h, labels, noise)
    chunks, n_tok = F.plan_chunks(tgt, seq, F.povid_groups(P), 3 * P, V, budget_rows=11)
    sizes = [len(c["rows"]) for c in chunks]
    assert len(chunks) >= 3 and len(set(sizes)) > 1, sizes
    assert any(c["fallback"] for c in chunks) and not all(c["fallback"] for c in chunks)
    assert all(len(c["rows"]) > 11 for c in chunks if c["fallback"])
    assert sorted(g for c in chunks for g in c["groups"].tolist()) == list(range(P))  # each group once
    assert torch.equal(n_tok[:P], (labels[:P, 1:] != -100).sum(1))
    _, pi = F.fused_preference_loss(rows, w, tgt, seq, F.povid_groups(P), ref, loss_fn("povid"),
                                    budget_bytes=11 * V * 4)
    with torch.no_grad():
        want = torch.cat([sequence_sums(h, w, labels), sequence_sums(h[:P], w, noise)])
    assert torch.allclose(pi, want, atol=1e-5, rtol=1e-6)
    # the reference's pass (no grad) gives this call's pi bit for bit: a run starts at exactly ln 2
    assert torch.equal(F.preference_logps(rows, w, tgt, seq, F.povid_groups(P), budget_bytes=11 * V * 4), pi)


def test_rows_that_score_nothing_and_rows_in_two_chunks(impl):
    """Unpacked rows (image, prompt, padding: no target) cost nothing and get a zero gradient; a row whose two
    targets belong to sequences of two different groups, split into two chunks, gets both contributions."""
    g = torch.Generator().manual_seed(1)
    N = 30
    h = torch.randn(N, D, generator=g).requires_grad_()
    w = (torch.randn(V, D, generator=g) * 0.3).requires_grad_()
    tgt = torch.randint(0, V, (N, 2), generator=g)
    seq = torch.stack([torch.arange(N) % 4, (torch.arange(N) + 1) % 4], 1)  # column 2: the next sequence's group
    tgt[::5] = -100  # rows scoring nothing
    tgt[1::7, 1] = -100
    groups = torch.tensor([[0, 1], [2, 3]])
    ref = torch.randn(4, generator=g) - 40
    fn = loss_fn("dpo", beta=0.2, rpo_alpha=0.3)
    chunks, _ = F.plan_chunks(tgt, seq, groups, 4, V, budget_rows=20)
    assert len(chunks) == 2 and set(chunks[0]["rows"].tolist()) & set(chunks[1]["rows"].tolist())
    outs = []
    for run in ("fused", "unfused"):
        h.grad = w.grad = None
        if run == "fused":
            loss, _ = F.fused_preference_loss(h, w, tgt, seq, groups, ref, fn, budget_bytes=20 * V * 4,
                                              use_triton=impl)
        else:
            loss, _ = F.unfused_preference_loss(h, w, tgt, seq, groups, ref, fn, use_triton=False)
        loss.backward()
        outs.append((loss.detach(), h.grad.clone(), w.grad.clone()))
    assert_close(outs[0], outs[1])
    assert torch.equal(outs[0][1][::5], torch.zeros(len(range(0, N, 5)), D))


@pytest.mark.parametrize("dtype", [torch.float16])
def test_16bit_inputs(impl, dtype):
    """fp16 hidden and head (bf16's tl.dot is wrong in Triton 3.9's interpreter, see tests/test_logprob.py; these
    kernels have no dot, but the unfused reference's does): the loss to 16-bit GEMM noise, the gradients in the
    inputs' dtype within 16-bit rounding of the unfused ones."""
    h, w, labels, noise, ref = case(dtype=dtype)
    ours = grads(lambda a, b: fused(a, b, labels, noise, ref, "povid", use_triton=impl), h, w, True)
    want = grads(lambda a, b: unfused(a, b, labels, noise, ref, "povid"), h, w, True)
    assert ours[1].dtype == ours[2].dtype == dtype
    assert_close(ours, want, atol=2e-3, rtol=1e-2)


def test_no_grad_errors_and_single_backward():
    h, w, labels, noise, ref = case()
    with torch.no_grad():
        loss, pi = fused(h, w, labels, noise, ref, "sigmoid")
        want = unfused(h, w, labels, noise, ref, "sigmoid")
    assert not loss.requires_grad and torch.allclose(loss, want, atol=1e-5)
    loss, pi = fused(h, w, labels, noise, ref, "sigmoid")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()
    rows, tgt, seq = F.pack(h.detach(), labels)
    fn, groups = loss_fn("dpo"), F.pair_groups(P)
    with pytest.raises(ValueError, match="more than one group"):
        F.fused_preference_loss(rows, w, tgt, seq, torch.tensor([[0, 4], [0, 5]]), ref[:2 * P], fn)
    with pytest.raises(ValueError, match="in no group"):
        F.fused_preference_loss(rows, w, tgt, seq, groups[:2], ref[:2 * P], fn)
    with pytest.raises(ValueError, match="targets must be"):
        F.fused_preference_loss(rows, w, tgt.clamp(min=0) + V, seq, groups, ref[:2 * P], fn)
    with pytest.raises(ValueError, match="one loss per group"):
        F.fused_preference_loss(rows, w, tgt, seq, groups, ref[:2 * P], lambda pi, r, n: pi.sum())


# --------------------------------------------------------------------------------------------- one optimizer step
@pytest.mark.parametrize("kind", ["sigmoid", "povid"])
def test_dpo_step_equals_unfused_step(kind):
    """A tiny Llava with LoRA adapters and a trainable LM head: one AdamW step through train.Net's plain composition
    (--fused_loss=False: summed log-probs, then the loss) and one through its fused loss give the same loss, the same
    gradients and the same weights after the step."""
    import train
    from model import Llava, LlavaConfig, TextConfig, VisionConfig
    from model.lora import adapters_disabled, apply_lora
    cfg = LlavaConfig(vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, image_size=16, patch_size=8),
                      text=TextConfig(vocab_size=V, hidden_size=D, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2),
                      image_token_id=V - 1, pad_token_id=0)
    g = torch.Generator().manual_seed(3)
    n_img = cfg.num_image_tokens
    ids = torch.randint(1, V - 1, (2 * P, n_img + 10), generator=g)
    ids[:, 1:1 + n_img] = V - 1
    labels = torch.full_like(ids, -100)
    for b in range(2 * P):
        labels[b, n_img + 3: n_img + 4 + b % 6] = ids[b, n_img + 3: n_img + 4 + b % 6]
    mask = torch.ones_like(ids)
    px = torch.randn(P, 3, 16, 16, generator=g).repeat(2, 1, 1, 1)
    noise = torch.where(labels[:P] != -100, torch.randint(1, V - 1, labels[:P].shape, generator=g), -100)
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        m = Llava(cfg)
        m.requires_grad_(False)
        apply_lora(m.language_model, 4, 8)
        with torch.no_grad():  # B = 0 would leave the step at ln 2 with zero adapter-A gradients: move off it
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.05)
        m.lm_head.weight.requires_grad_(True)
        net = train.Net(m, fused)
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        nt = noise if kind == "povid" else None
        b = dict(input_ids=ids, pixel_values=px, attention_mask=mask, labels=labels, ids=list(range(P)))
        groups = F.povid_groups(P) if kind == "povid" else F.pair_groups(P)
        fn = loss_fn("povid" if kind == "povid" else "dpo", rpo_alpha=1.0)
        with torch.no_grad(), adapters_disabled(m):
            ref = net("logps", b, nt, groups)
        if fused:  # train.py's two branches of Run.pair_loss
            loss, _ = net("preference_loss", b, nt, groups, ref, fn)
        else:
            loss = fn(net("logps", b, nt)[groups], ref[groups], train.scored_tokens(b, nt)[groups]).sum()
        (loss / P).backward()
        grads_ = [p.grad.clone() for p in params]
        opt.step()
        results.append((loss.detach(), grads_, [p.detach().clone() for p in params]))
    (l0, g0, p0), (l1, g1, p1) = results
    assert torch.allclose(l0, l1, atol=1e-5)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()
    for a, b in zip(p0, p1):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()  # Adam's first step is ~lr sign(g): 1e-3 of it
