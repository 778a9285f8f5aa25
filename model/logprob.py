"""Sequence log-probs without materialising [N, V] logits: the DPO hot path.

    log p(t_i | h_i) = h_i . w_{t_i} - logsumexp_v(h_i . w_v)                       (per scored row i)
    d/dh_i = w_{t_i} - sum_v p_iv w_v        d/dW = sum_i g_i (onehot(t_i) - p_i)^T h_i

The obvious `log_softmax(hidden @ W.T).gather(...)` holds the full (N, V) logits in fp32 several times over
(logits, log-softmax saved for backward, its gradient): ~3 GiB per 8k tokens at V = 32000, mostly for image and
prompt rows that are never scored. Here (the approach of Apple's Cut Cross-Entropy and Liger's fused linear
cross-entropy, written from scratch):

  * only rows whose target is not `ignore_index` are computed (gathered first);
  * forward walks the vocabulary in blocks: each block's logits for every scored row, folded into a running
    max and sum of exp per row (the online softmax of Milakov & Gimelshein, 2018, as in FlashAttention), the
    target's logit picked from the block that holds it; it keeps only the per-row logsumexp (O(N) fp32);
  * backward walks the same blocks: it recomputes each block's logits from the saved lse, forms
    g * (onehot - softmax), writes that block of dW once (fp32) and accumulates dh;
  * with a frozen head (LoRA: weight.requires_grad is False) the input gradient per unit upstream gradient,
    w_t - p @ W, is accumulated during the forward (rescaled with the running max like the sum), so backward
    is a scale: no recompute at all.

On CUDA with triton installed the same function runs a fused Triton kernel (model/logprob_triton.py) when it is
present; the torch path runs everywhere. Needs torch alone: copy this file anywhere.

    lp = sequence_logprobs(hidden, lm_head.weight, targets)  # (N,) fp32, 0 where targets == -100
"""
from __future__ import annotations

import torch


_ONEDNN = torch.backends.mkldnn.is_available()


def _block_cols(d: int, v: int, elem: int) -> int:
    """Vocabulary columns per block: an (M, block) fp32 block of logits is a quarter of `hidden`'s size (M x d),
    whatever M is, but at least 256 columns, under which GEMMs lose speed. Why not bigger: the blocks are fresh
    tensors (see _linear), and on CPU glibc's heap keeps what they fragment. Measured (CPU, M = 4096, D = 1024,
    V = 32000, trainable head): peak memory beyond the gradients 54 MiB with 256 columns, 84 with 512, 162 with
    1024, in the same time."""
    return min(v, max(256, d * elem // 16))


def _linear(x, w):
    """x (m, k) @ w (n, k)^T -> (m, n) fp32, strided views too. CPU fp32 goes through oneDNN's GEMM (the linear op
    torch registers for it) rather than torch.mm, which calls MKL's sgemm: MKL runs its AVX2 code on x86 CPUs that
    are not Intel's, and on the AMD Zen 5 host of the README's CPU table oneDNN's AVX-512 kernels do the same
    GEMMs about 1.7x faster. Elsewhere (CUDA, bf16/fp16 inputs, a torch built without oneDNN) the plain matmul,
    its result in fp32 for everything after it."""
    if _ONEDNN and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return (x @ w.t()).float()


def _hits(targets, v0: int, n: int):
    """Rows whose target lies in the vocabulary block [v0, v0 + n), and its column there."""
    rows = ((targets >= v0) & (targets < v0 + n)).nonzero()[:, 0]
    return rows, targets[rows] - v0


def _in_block(targets, v0: int, n: int):
    """Whether each row's target lies in the vocabulary block [v0, v0 + n) (M,), and its column there (M, 1),
    clamped into the block for the other rows: a mask rather than _hits' row list, so no host sync for its size."""
    inside = (targets >= v0) & (targets < v0 + n)
    return inside, (targets - v0).clamp(0, n - 1)[:, None]


class _BlockedLogprob(torch.autograd.Function):
    """Both passes walk the vocabulary in blocks of `block` columns, each block's logits for every scored row at
    once: an (M, block) fp32 workspace, never (M, V)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, block: int):
        # hidden (M, D) scored rows only, weight (V, D), targets (M,)
        (M, D), V, dev = hidden.shape, weight.shape[0], hidden.device
        fused_grad = ctx.needs_input_grad[0] and not ctx.needs_input_grad[1]  # frozen head: dh now, scale later
        m = torch.full((M,), float("-inf"), device=dev)  # running max of the logits seen so far
        s = torch.zeros(M, device=dev)  # running sum of exp(logit - m)
        target_logit = torch.empty(M, device=dev)
        acc = torch.zeros(M, D, device=dev) if fused_grad else None  # running sum of exp(logit - m) w_v
        for v0 in range(0, V, block):
            w = weight[v0:v0 + block]  # (Vb, D)
            z = _linear(hidden, w)  # (M, Vb) fp32 logits of this block
            inside, cols = _in_block(targets, v0, w.shape[0])
            target_logit = torch.where(inside, z.gather(1, cols)[:, 0], target_logit)
            m_new = torch.maximum(m, z.amax(dim=1))
            rescale = (m - m_new).exp()  # (M,) what was summed under the old max; exp(-inf) = 0 the first time
            z.sub_(m_new[:, None]).exp_()  # in place: exp(logit - m_new)
            s = s * rescale + z.sum(dim=1)
            if fused_grad:
                acc.mul_(rescale[:, None]).add_(_linear(z.to(weight.dtype), w.t()))  # (M, Vb) @ (Vb, D)
            m = m_new
            del z  # before the next block's GEMM allocates its own
        lse = m + s.log()  # (M,) logsumexp over the whole vocabulary (the online softmax of Milakov & Gimelshein)
        dh_unit = acc.div_(s[:, None]).neg_().add_(weight[targets]) if fused_grad else None  # w_t - p @ W, in acc
        ctx.fused, ctx.block = fused_grad, block
        ctx.save_for_backward(hidden, weight, targets, lse, dh_unit)
        return target_logit - lse

    @staticmethod
    def backward(ctx, g):  # g (M,) upstream gradient of each row's log-prob
        hidden, weight, targets, lse, dh_unit = ctx.saved_tensors
        if ctx.fused:
            return (dh_unit * g.float()[:, None]).to(hidden.dtype), None, None, None
        dh, dw = blocked_backward(hidden, weight, targets, lse, g, ctx.block, ctx.needs_input_grad[0],
                                  ctx.needs_input_grad[1])
        return dh, dw, None, None


def blocked_backward(hidden, weight, targets, lse, g, block: int, need_h: bool, need_w: bool):
    """For W[v0:v1]: recompute the (M, Vb) logits of every row, dlogits = g * (onehot - softmax) with the forward's
    lse, then dW[v0:v1] = dlogits^T h is written once (one GEMM with K = M, no read-modify-write of a (V, D)
    accumulator) and dh += dlogits W[v0:v1] (an (M, D) fp32 accumulator). (model/logprob_triton.py does the same on
    CUDA, with a Triton row kernel forming dlogits.)"""
    g = g.float()
    (M, D), V = hidden.shape, weight.shape[0]
    fp32 = weight.dtype == torch.float32 and hidden.dtype == torch.float32
    hf = hidden if fp32 else hidden.float()  # (M, D): the dW GEMMs accumulate in fp32
    dh = torch.zeros(M, D, dtype=torch.float32, device=hidden.device) if need_h else None
    dw = torch.empty(V, D, dtype=torch.float32, device=weight.device) if need_w else None
    for v0 in range(0, V, block):
        w = weight[v0:v0 + block]  # (Vb, D)
        dl = _linear(hidden, w)  # recompute (M, Vb) fp32
        dl.sub_(lse[:, None]).exp_().mul_(-g[:, None])  # -g * softmax
        inside, cols = _in_block(targets, v0, w.shape[0])
        dl.scatter_add_(1, cols, (g * inside)[:, None])  # + g * onehot
        if need_h:
            dh += _linear(dl, (w if fp32 else w.float()).t())  # (M, Vb) @ (Vb, D)
        if need_w:
            dw[v0:v0 + w.shape[0]] = _linear(dl.t(), hf.t())  # (Vb, M) @ (M, D)
        del dl  # before the next block's GEMM allocates its own
    return (dh.to(hidden.dtype) if need_h else None), (dw.to(weight.dtype) if need_w else None)


def sequence_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                      block_cols: int | None = None, use_triton: bool | None = None, rows=None) -> torch.Tensor:
    """hidden (N, D), weight (V, D), targets (N,) -> (N,) fp32 log p(target); 0 where targets == ignore_index.
    Differentiable with respect to hidden and weight. use_triton: None = the Triton kernels on CUDA when triton is
    installed, False = the torch path on any device, True = the Triton kernels (also CPU tensors under
    TRITON_INTERPRET=1). rows: the (M,) indices of the scored rows when the caller knows them (a training batch's
    labels are on the host before the copy): then nothing is read back from the device - no host sync - and the
    targets are trusted; without it they are counted and checked (one sync)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} must be (N, D), (V, D)")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} must be ({hidden.shape[0]},)")
    if rows is None:
        keep = targets != ignore_index  # (N,)
        bad = keep & ((targets < 0) | (targets >= weight.shape[0]))
        n_keep, n_bad = torch.stack([keep.sum(), bad.sum()]).tolist()  # one host sync for both
        if n_bad:
            raise ValueError(f"targets must be in [0, {weight.shape[0]}) or {ignore_index}")
    else:
        n_keep = len(rows)
    out = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device) if n_keep < len(targets) else None
    if n_keep == 0:
        return out + 0.0 * hidden.sum() if hidden.requires_grad else out  # keep the graph connected
    every_row = n_keep == hidden.shape[0]  # nothing to gather or scatter back (and no copy of hidden)
    idx = None if every_row else keep.nonzero()[:, 0] if rows is None else rows  # (M,) rows that are scored
    t = targets if every_row else targets[idx]
    h = hidden if every_row else hidden.index_select(0, idx)  # (M, D): image/prompt rows never touch the head
    if use_triton is None:
        use_triton = hidden.is_cuda and _triton_ok()
    if use_triton:
        from .logprob_triton import triton_sequence_logprobs
        lp = triton_sequence_logprobs(h, weight, t)
    else:
        block = block_cols or _block_cols(h.shape[1], weight.shape[0], h.element_size())
        lp = _BlockedLogprob.apply(h, weight, t, block)
    return lp if every_row else out.index_put((idx,), lp)


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
        from . import logprob_triton  # noqa: F401
    except ImportError:
        return False
    return True


def naive_logprobs(hidden, weight, targets, ignore_index: int = -100):
    """The reference: full (N, V) logits, log_softmax, gather. For tests and benchmarks."""
    logp = torch.log_softmax((hidden @ weight.t()).float(), dim=-1)
    lp = logp.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    return lp * (targets != ignore_index)
