"""model/logprob.py: values and both gradients equal the naive full-logits computation."""
import os

import pytest
import torch

from model.logprob import naive_logprobs, sequence_logprobs


def case(N=37, D=24, V=101, ignored=(0, 5, 6, 30), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(V, D, generator=g) * 0.3).to(dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    t[list(ignored)] = -100
    up = torch.randn(N, generator=g)  # non-uniform upstream gradient
    return h, w, t, up


def grads(fn, h, w, t, up, head_trainable=True):
    h = h.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_(head_trainable)
    out = fn(h, w, t)
    (out * up).sum().backward()
    return out.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [None, 5, 64])  # 5: N not a multiple of the chunk
@pytest.mark.parametrize("head_trainable", [True, False])
@pytest.mark.parametrize("V", [101, 601])  # 601: backward in three vocabulary blocks of 256, the last partial
def test_matches_naive_fp32(chunk, head_trainable, V):
    h, w, t, up = case(V=V)
    ours = grads(lambda a, b, c: sequence_logprobs(a, b, c, chunk_rows=chunk), h, w, t, up, head_trainable)
    ref = grads(naive_logprobs, h, w, t, up, head_trainable)
    for a, b in zip(ours, ref):
        if b is None:
            assert a is None
        else:
            assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert torch.all(ours[0][t == -100] == 0)


def test_edge_cases():
    h, w, t, up = case(N=1, ignored=())
    assert torch.allclose(sequence_logprobs(h, w, t), naive_logprobs(h, w, t), atol=1e-5)  # a single row
    h, w, t, up = case(N=6, ignored=range(6))  # all rows ignored
    out = sequence_logprobs(h, w, t)
    assert torch.equal(out, torch.zeros(6))
    out.sum().backward()
    assert torch.equal(h.grad, torch.zeros_like(h))
    h, w, t, up = case()
    hn = h.detach().t().contiguous().t()[::1]  # non-contiguous views
    wn = torch.cat([w.detach(), w.detach()], dim=1)[:, ::2]
    assert not wn.is_contiguous()
    assert torch.allclose(sequence_logprobs(hn, wn, t), naive_logprobs(hn, wn, t), atol=1e-5)
    with pytest.raises(ValueError, match="targets"):
        sequence_logprobs(h, w, torch.full((37,), 10_000))


def test_bf16_inputs():
    """bf16 hidden/weight: logits are computed by a bf16 GEMM in both paths and reduced in fp32, so the values
    agree to bf16 GEMM noise; dH goes through one bf16 cast of (onehot - p) * g (dW is accumulated from the fp32 values). Tolerance: 2e-2 absolute on
    log-probs of magnitude ~5 (bf16 has 8 mantissa bits: relative 4e-3), 3e-2 on gradients."""
    h, w, t, up = case(dtype=torch.bfloat16)
    ours = grads(sequence_logprobs, h, w, t, up)
    ref = grads(naive_logprobs, h, w, t, up)
    assert torch.allclose(ours[0], ref[0], atol=2e-2)
    for a, b in zip(ours[1:], ref[1:]):
        assert torch.allclose(a.float(), b.float(), atol=3e-2)


# --------------------------------------------------------------------------- the Triton kernel, interpreted on CPU
def _triton_interpreted():
    os.environ["TRITON_INTERPRET"] = "1"  # before the first triton import: run kernels on CPU tensors
    try:
        from model import logprob_triton
    except ImportError:
        pytest.skip("triton is not installed (it is in requirements-dev.txt)")
    return logprob_triton


@pytest.mark.parametrize("N,V", [(37, 101), (1, 300), (70, 129)])  # V not a multiple of any block, N of none
def test_triton_kernel_matches_naive(N, V):
    lt = _triton_interpreted()
    h, w, t, up = case(N=N, V=V, D=24, ignored=[i for i in (0, 5, 6, 30) if i < N - 1])
    keep = t != -100
    hn, tn = h.detach()[keep], t[keep]

    def fn(a, b, c):  # the Triton forward on the gathered rows, scattered back like sequence_logprobs does
        out = torch.zeros(a.shape[0])
        k = c != -100
        return out.index_put((k.nonzero()[:, 0],), lt.triton_sequence_logprobs(a[k], b, c[k]))

    ours = grads(fn, h, w, t, up)
    ref = grads(naive_logprobs, h, w, t, up)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    lse, lp = lt.lse_and_logprob(hn, w.detach(), tn, block_m=16, block_v=32, block_d=16)
    full = hn @ w.detach().t()
    assert torch.allclose(lse, torch.logsumexp(full, -1), atol=1e-5)
