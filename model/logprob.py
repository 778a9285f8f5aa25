"""Sequence log-probs without materialising [N, V] logits: the DPO hot path.

    log p(t_i | h_i) = h_i . w_{t_i} - logsumexp_v(h_i . w_v)                       (per scored row i)
    d/dh_i = w_{t_i} - sum_v p_iv w_v        d/dW = sum_i g_i (onehot(t_i) - p_i)^T h_i

The obvious `log_softmax(hidden @ W.T).gather(...)` holds the full (N, V) logits in fp32 several times over
(logits, log-softmax saved for backward, its gradient): ~3 GiB per 8k tokens at V = 32000, mostly for image and
prompt rows that are never scored. Here (the approach of Apple's Cut Cross-Entropy and Liger's fused linear
cross-entropy, written from scratch):

  * only rows whose target is not `ignore_index` are computed (gathered first);
  * forward walks the rows in chunks sized so the (chunk, V) fp32 workspace is about the size of `hidden`;
    it keeps only the per-row logsumexp (O(N) fp32) for backward;
  * backward walks the vocabulary in blocks: it recomputes each block's logits for all rows from the saved lse,
    forms g * (onehot - softmax), writes that block of dW once (fp32) and accumulates dh;
  * with a frozen head (LoRA: weight.requires_grad is False) the input gradient per unit upstream gradient,
    w_t - p @ W, is formed during the forward while the chunk's softmax is at hand, so backward is a scale:
    no recompute at all.

On CUDA with triton installed the same function runs a fused Triton kernel (model/logprob_triton.py) when it is
present; the torch path runs everywhere. Needs torch alone: copy this file anywhere.

    lp = sequence_logprobs(hidden, lm_head.weight, targets)  # (N,) fp32, 0 where targets == -100
"""
from __future__ import annotations

import torch


def _chunk_rows(n_rows: int, d: int, v: int, elem: int) -> int:
    """Rows per chunk so that a (chunk, V) fp32 block is about the size of `hidden` (n_rows x d), but at least 256
    rows: thinner GEMMs lose efficiency (CPU, V = 32000, D = 1024: 64 rows cost 8% more than the full GEMM, 128 rows
    as much, 256 rows and up 3% less), and 256 x 32000 fp32 is only 31 MiB."""
    return min(n_rows, max(256, (n_rows * d * elem) // (v * 4)))


def _logits_into(h, weight, out):
    """(c, D) @ (V', D)^T written into `out` (c, V'), a view of a workspace allocated once per call: a fresh block
    per chunk would cost page faults each time and, on CPU, let glibc's heap grow by hundreds of MiB (freed 30 MiB
    blocks fall under its dynamic mmap threshold and stay mapped). bf16/fp16 inputs: the GEMM in their dtype, then
    fp32 for everything after it."""
    if h.dtype == torch.float32 and weight.dtype == torch.float32:
        return torch.mm(h, weight.t(), out=out)
    return out.copy_(h @ weight.t())


def _exp_shifted_(logits):
    """In place: logits (c, V) fp32 -> exp(logits - rowmax), the softmax before its normalisation; returns the row
    sums (c, 1) and lse (c,). One exp pass (torch.logsumexp would add a second, and a temporary the size of the
    block); the caller divides its (c, D) product by the sums instead of the (c, V) block."""
    m = logits.amax(dim=-1, keepdim=True)  # (c, 1)
    s = logits.sub_(m).exp_().sum(dim=-1, keepdim=True)  # (c, 1)
    return s, (m + s.log())[:, 0]


class _ChunkedLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        # hidden (M, D) scored rows only, weight (V, D), targets (M,)
        M = hidden.shape[0]
        out = torch.empty(M, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(M, dtype=torch.float32, device=hidden.device)
        fused_grad = ctx.needs_input_grad[0] and not ctx.needs_input_grad[1]  # frozen head: dh now, scale later
        dh_unit = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if fused_grad else None
        buf = torch.empty(min(chunk, M), weight.shape[0], dtype=torch.float32, device=hidden.device)  # (c, V)
        for s in range(0, M, chunk):
            h, t = hidden[s:s + chunk], targets[s:s + chunk]
            logits = _logits_into(h, weight, buf[: h.shape[0]])  # (c, V)
            target_logit = logits.gather(1, t[:, None])[:, 0]  # before the block is overwritten
            if fused_grad:
                sums, l = _exp_shifted_(logits)  # logits now hold exp(logit - max) = p * sums
                dh_unit[s:s + chunk] = weight[t].float() - (logits.to(weight.dtype) @ weight).float() / sums
            else:
                l = torch.logsumexp(logits, dim=-1)  # (c,)
            out[s:s + chunk] = target_logit - l
            lse[s:s + chunk] = l
        ctx.fused = fused_grad
        ctx.save_for_backward(hidden, weight, targets, lse, dh_unit)
        return out

    @staticmethod
    def backward(ctx, g):  # g (M,) upstream gradient of each row's log-prob
        hidden, weight, targets, lse, dh_unit = ctx.saved_tensors
        if ctx.fused:
            return (dh_unit * g.float()[:, None]).to(hidden.dtype), None, None, None
        dh, dw = chunked_backward(hidden, weight, targets, lse, g, ctx.needs_input_grad[0],
                                  ctx.needs_input_grad[1])
        return dh, dw, None, None


def chunked_backward(hidden, weight, targets, lse, g, need_h: bool, need_w: bool):
    """Backward in vocabulary blocks: for W[v0:v1], recompute the (M, Vb) logits of every row, dlogits = g * (onehot -
    softmax) with the forward's lse, then dW[v0:v1] = dlogits^T h is written once (one GEMM with K = M, no read-
    modify-write of a (V, D) accumulator per row chunk) and dh += dlogits W[v0:v1] (an (M, D) fp32 accumulator).
    (model/logprob_triton.py does the same on CUDA, with a Triton row kernel forming dlogits.)"""
    g = g.float()
    M, D = hidden.shape
    V = weight.shape[0]
    vb = min(V, max(256, D * hidden.element_size() // 4))  # (M, Vb) fp32 block ~ the size of hidden
    fp32 = weight.dtype == torch.float32 and hidden.dtype == torch.float32
    hf = hidden if fp32 else hidden.float()  # (M, D): the dW GEMMs accumulate in fp32
    dh = torch.zeros(M, D, dtype=torch.float32, device=hidden.device) if need_h else None
    dw = torch.empty(V, D, dtype=torch.float32, device=weight.device) if need_w else None
    flat = torch.empty(M * vb, dtype=torch.float32, device=hidden.device)  # one workspace, reused by every block
    for v0 in range(0, V, vb):
        w = weight[v0:v0 + vb]  # (Vb, D)
        n = w.shape[0]
        dl = _logits_into(hidden, w, flat[: M * n].view(M, n))  # recompute (M, Vb)
        dl.sub_(lse[:, None]).exp_().mul_(-g[:, None])  # -g * softmax
        hit = ((targets >= v0) & (targets < v0 + n)).nonzero()[:, 0]
        dl[hit, targets[hit] - v0] += g[hit]  # + g * onehot
        if need_h:
            dh.addmm_(dl, w if fp32 else w.float())
        if need_w:
            torch.mm(dl.t(), hf, out=dw[v0:v0 + n])
    return (dh.to(hidden.dtype) if need_h else None), (dw.to(weight.dtype) if need_w else None)


def sequence_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                      chunk_rows: int | None = None, use_triton: bool | None = None) -> torch.Tensor:
    """hidden (N, D), weight (V, D), targets (N,) -> (N,) fp32 log p(target); 0 where targets == ignore_index.
    Differentiable with respect to hidden and weight. use_triton: None = the Triton kernels on CUDA when triton is
    installed, False = the torch path on any device, True = the Triton kernels (also CPU tensors under
    TRITON_INTERPRET=1)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} must be (N, D), (V, D)")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} must be ({hidden.shape[0]},)")
    keep = targets != ignore_index  # (N,)
    bad = keep & ((targets < 0) | (targets >= weight.shape[0]))
    n_keep, n_bad = torch.stack([keep.sum(), bad.sum()]).tolist()  # one host sync for both
    if n_bad:
        raise ValueError(f"targets must be in [0, {weight.shape[0]}) or {ignore_index}")
    out = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device) if n_keep < len(targets) else None
    if n_keep == 0:
        return out + 0.0 * hidden.sum() if hidden.requires_grad else out  # keep the graph connected
    every_row = n_keep == hidden.shape[0]  # nothing to gather or scatter back (and no copy of hidden)
    idx = None if every_row else keep.nonzero()[:, 0]  # (M,) rows that are scored
    t = targets if every_row else targets[idx]
    h = hidden if every_row else hidden.index_select(0, idx)  # (M, D): image/prompt rows never touch the head
    if use_triton is None:
        use_triton = hidden.is_cuda and _triton_ok()
    if use_triton:
        from .logprob_triton import triton_sequence_logprobs
        lp = triton_sequence_logprobs(h, weight, t)
    else:
        chunk = chunk_rows or _chunk_rows(h.shape[0], h.shape[1], weight.shape[0], h.element_size())
        lp = _ChunkedLogprob.apply(h, weight, t, chunk)
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
