"""The CUDA path of `sequence_logprobs`: a Triton kernel that fuses the LM-head matmul with an online logsumexp and
the target gather, so the (rows, V) logits never reach global memory (the forward of Cut Cross-Entropy, Wijmans et
al. 2024, written from scratch).

    for each block of BLOCK_M rows:                 (one program)
        m, s, t = -inf, 0, 0                        running max, running sum of exp(logit - m), target logit
        for each block of BLOCK_V vocabulary rows:
            z = h_block @ W_block^T                 (BLOCK_M, BLOCK_V), fp32 accumulation over D in BLOCK_D steps
            m' = max(m, rowmax(z));  s = s * exp(m - m') + rowsum(exp(z - m'));  m = m'
            t += z[target column] if the target falls in this block
        lse = m + log(s);  write lse and t - lse    O(rows) outputs only

Backward recomputes the logits in vocabulary blocks with cuBLAS GEMMs (shared with the torch path in model/logprob.py):
dlogits = g * (onehot - exp(z - lse)), dh = dlogits @ W, dW += dlogits^T @ h in fp32.

Imported lazily, only when CUDA and triton are present. Triton's interpreter (TRITON_INTERPRET=1) runs the same
kernel on CPU tensors, which is how tests/test_logprob.py checks it on a machine without a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lse_target_kernel(h_ptr, w_ptr, t_ptr, lse_ptr, tgt_ptr, M, V, D,
                       stride_hm, stride_hd, stride_wv, stride_wd,
                       BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    mask_m = offs_m < M
    target = tl.load(t_ptr + offs_m, mask=mask_m, other=-1)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    s_i = tl.zeros((BLOCK_M,), tl.float32)
    t_i = tl.zeros((BLOCK_M,), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)  # (BLOCK_V,)
        mask_v = offs_v < V
        acc = tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            h = tl.load(h_ptr + offs_m[:, None] * stride_hm + offs_d[None, :] * stride_hd,
                        mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
            w = tl.load(w_ptr + offs_v[:, None] * stride_wv + offs_d[None, :] * stride_wd,
                        mask=mask_v[:, None] & mask_d[None, :], other=0.0)  # (BLOCK_V, BLOCK_D)
            acc += tl.dot(h, tl.trans(w))
        z = tl.where(mask_v[None, :], acc, float("-inf"))  # padding columns take no probability mass
        m_new = tl.maximum(m_i, tl.max(z, axis=1))
        s_i = s_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m_i = m_new
        hit = offs_v[None, :] == target[:, None]  # (BLOCK_M, BLOCK_V): at most one True per row
        t_i += tl.sum(tl.where(hit, acc, 0.0), axis=1)
    lse = m_i + tl.log(s_i)
    tl.store(lse_ptr + offs_m, lse, mask=mask_m)
    tl.store(tgt_ptr + offs_m, t_i - lse, mask=mask_m)


def lse_and_logprob(hidden, weight, targets, block_m: int = 64, block_v: int = 128, block_d: int = 64):
    """hidden (M, D), weight (V, D), targets (M,) all valid -> (lse (M,), logp (M,)) fp32, logits never stored."""
    M, D = hidden.shape
    V = weight.shape[0]
    lse = torch.empty(M, dtype=torch.float32, device=hidden.device)
    logp = torch.empty(M, dtype=torch.float32, device=hidden.device)
    grid = (triton.cdiv(M, block_m),)
    _lse_target_kernel[grid](hidden, weight, targets, lse, logp, M, V, D,
                             hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
                             BLOCK_M=block_m, BLOCK_V=block_v, BLOCK_D=block_d)
    return lse, logp


class _TritonLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets):
        lse, logp = lse_and_logprob(hidden, weight, targets)
        ctx.save_for_backward(hidden, weight, targets, lse)
        return logp

    @staticmethod
    def backward(ctx, g):
        from .logprob import chunked_backward
        hidden, weight, targets, lse = ctx.saved_tensors
        dh, dw = chunked_backward(hidden, weight, targets, lse, g, ctx.needs_input_grad[0],
                                  ctx.needs_input_grad[1])
        return dh, dw, None


def triton_sequence_logprobs(hidden, weight, targets):
    """Scored rows only (the caller gathers them): (M, D), (V, D), (M,) -> (M,) fp32 log p(target)."""
    return _TritonLogprob.apply(hidden, weight, targets)
