"""model/logprob.py and model/logprob_triton.py: values and both gradients equal the naive full-logits computation.

Each test runs the torch path and the Triton kernels ("impl"): on a machine with CUDA on GPU tensors with the
compiled kernels, otherwise on CPU tensors with the kernels under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton)."""
import pytest
import torch

from model.logprob import naive_logprobs, sequence_logprobs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _triton():
    try:
        from model import logprob_triton
    except ImportError:
        pytest.skip("triton is not installed (it is in requirements-dev.txt)")
    return logprob_triton


@pytest.fixture(params=["torch", "triton", "triton-rows", "triton-tile"])
def impl(request, monkeypatch):
    """The function under test; the Triton one with small tiles (16 rows x 32 vocabulary x 16 D, groups of 2 row
    tiles) so the tiny shapes below span several row tiles, a partial last group, partial vocabulary tiles and a
    partial D step."""
    if request.param == "torch":
        return lambda h, w, t, **kw: sequence_logprobs(h, w, t, use_triton=False, **kw)
    lt = _triton()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        monkeypatch.setitem(lt.CONFIGS, dtype, (16, 32, 16, 2, 4, 2))
    monkeypatch.setattr(lt, "ROW_BLOCK", 64)  # several blocks per row, the last partial
    monkeypatch.setattr(lt, "WORKSPACE", 1)  # V = 601 > 256 columns: several backward blocks
    if request.param != "triton":  # the other forwards: cuBLAS logits per row chunk + the row kernel; pointer loads
        monkeypatch.setattr(lt, "FORWARD", request.param.removeprefix("triton-"))
    return lambda h, w, t, block_cols=None: sequence_logprobs(h, w, t, use_triton=True)


def case(N=37, D=24, V=101, ignored=(0, 5, 6, 30), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g).to(DEVICE, dtype).requires_grad_()
    w = (torch.randn(V, D, generator=g) * 0.3).to(DEVICE, dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    t[list(ignored)] = -100
    up = torch.randn(N, generator=g)  # non-uniform upstream gradient
    return h, w, t.to(DEVICE), up.to(DEVICE)


def grads(fn, h, w, t, up, head_trainable=True):
    h = h.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_(head_trainable)
    out = fn(h, w, t)
    (out * up).sum().backward()
    return out.detach(), h.grad, w.grad


@pytest.mark.parametrize("block", [None, 7, 64])  # the torch path's vocabulary blocks; V is no multiple of 7 or 64
@pytest.mark.parametrize("head_trainable", [True, False])
@pytest.mark.parametrize("V", [101, 601])  # 601: backward in three vocabulary blocks of 256, the last partial
def test_matches_naive_fp32(impl, block, head_trainable, V):
    h, w, t, up = case(V=V)
    ours = grads(lambda a, b, c: impl(a, b, c, block_cols=block), h, w, t, up, head_trainable)
    ref = grads(naive_logprobs, h, w, t, up, head_trainable)
    for a, b in zip(ours, ref):
        if b is None:
            assert a is None
        else:
            assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert torch.all(ours[0][t == -100] == 0)


def test_edge_cases(impl):
    h, w, t, up = case(ignored=())  # every row scored: no gather / scatter
    for a, b in zip(grads(impl, h, w, t, up), grads(naive_logprobs, h, w, t, up)):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    h, w, t, up = case(N=1, ignored=())
    assert torch.allclose(impl(h, w, t), naive_logprobs(h, w, t), atol=1e-5)  # a single row
    h, w, t, up = case(N=6, ignored=range(6))  # all rows ignored
    out = impl(h, w, t)
    assert torch.equal(out, torch.zeros(6, device=DEVICE))
    out.sum().backward()
    assert torch.equal(h.grad, torch.zeros_like(h))
    h, w, t, up = case()
    hn = h.detach().t().contiguous().t()[::1]  # non-contiguous views
    wn = torch.cat([w.detach(), w.detach()], dim=1)[:, ::2]
    assert not wn.is_contiguous()
    assert torch.allclose(impl(hn, wn, t), naive_logprobs(hn, wn, t), atol=1e-5)
    with pytest.raises(ValueError, match="targets"):
        impl(h, w, torch.full((37,), 10_000, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_inputs(impl, dtype, request):
    """bf16/fp16 hidden/weight: logits come from a 16-bit GEMM with fp32 accumulation in every path and are reduced
    in fp32 (the naive and torch paths round them to 16 bits first, the Triton kernel does not), so the values agree
    to 16-bit GEMM noise; the gradients go through one 16-bit cast of g * (onehot - p) like the naive backward's.
    Tolerance: 2e-2 absolute on log-probs of magnitude ~5 (bf16 has 8 mantissa bits: relative 4e-3); gradients
    3e-2 absolute plus 1% relative (dW entries reach ~6, where one bf16 ulp is 0.031: rounding differently ordered
    fp32 sums may land one ulp apart)."""
    if dtype == torch.bfloat16 and DEVICE == "cpu" and request.node.callspec.params["impl"] != "torch":
        pytest.skip("Triton 3.9's interpreter computes bf16 tl.dot wrongly (a 16x16 product is off by ~1e10 while "
                    "fp16 and fp32 are exact); fp16 covers the tile kernels' 16-bit path here, bf16 runs compiled "
                    "on a GPU")
    h, w, t, up = case(dtype=dtype)
    ours = grads(impl, h, w, t, up)
    ref = grads(naive_logprobs, h, w, t, up)
    assert torch.allclose(ours[0], ref[0], atol=2e-2)
    for a, b in zip(ours[1:], ref[1:]):
        assert a.dtype == dtype
        assert torch.allclose(a.float(), b.float(), atol=3e-2, rtol=1e-2)


# --------------------------------------------------------------------------- the Triton forward kernel alone
@pytest.mark.parametrize("N,V", [(37, 101), (1, 300), (70, 129)])  # V not a multiple of any tile, N of none
def test_triton_forward_lse(N, V):
    """The kernel's lse and log-prob per row, with the default tiles and with small ones, vs torch.logsumexp."""
    lt = _triton()
    h, w, t, _ = case(N=N, V=V, D=24, ignored=())
    full = h.detach() @ w.detach().t()  # (N, V)
    for config in (None, (16, 32, 16, 2, 4, 2)):
        lse, lp = lt.lse_and_logprob(h.detach(), w.detach(), t, config=config)
        assert torch.allclose(lse, torch.logsumexp(full, -1), atol=1e-5)
        assert torch.allclose(lp, torch.log_softmax(full, -1).gather(1, t[:, None])[:, 0], atol=1e-5)
