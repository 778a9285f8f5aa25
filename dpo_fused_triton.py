"""The CUDA path of dpo_fused.py's chunks: cuBLAS GEMMs around two Triton row kernels (a helper of dpo_fused.py).

For one chunk of whole groups, rows R (every row scores 1..K targets), all in the forward:

    Z = H_c W^T                  cuBLAS into an (R, V) fp32 workspace (16-bit operands, fp32 output: the logits are
                                 never rounded to 16 bits, so the log-probs match the fused forward of
                                 model/logprob_triton.py that the reference is scored with)
    lse                          model/logprob_triton.py's row kernel (online logsumexp per row)
    log p_ik = Z[i, t_ik] - lse  a gather; then dpo_fused._chunk_loss: pi, the loss, c = dLoss / dlog p (torch)
    dZ = sum_k c_ik onehot(t_ik) - (sum_k c_ik) exp(Z - lse)     _dz_kernel, into an (R, V) 16-bit buffer (in place
                                                                 for fp32 inputs)
    dH_c = dZ W                  cuBLAS, fp32 output
    dW += dZ^T H_c               cuBLAS, accumulated in fp32 (skipped for a frozen head)

FLOPs: 6 R V D with a trainable head, 4 with a frozen one; memory traffic beyond the GEMMs: Z written once in fp32,
read twice, dZ written once in 16 bits (14 bytes per logit).

Imported lazily by dpo_fused.py, only on CUDA with triton (or under TRITON_INTERPRET=1, which runs the same kernels
on CPU tensors: tests/test_dpo_fused.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from model import logprob_triton as lt


@triton.jit
def _dz_kernel(z_ptr, dz_ptr, t_ptr, c_ptr, lse_ptr, g_ptr, V, stride_z, stride_dz, K: tl.constexpr,
               BLOCK: tl.constexpr):
    """One program per row: fp32 logits z (rows, V) -> dz = sum_k c_k [col = t_k] - g exp(z - lse), g = sum_k c_k,
    stored in dz's dtype. dz may be z itself (same dtype): each element is read and written by the same lane."""
    r = tl.program_id(0)
    zrow = z_ptr + r.to(tl.int64) * stride_z
    dzrow = dz_ptr + r.to(tl.int64) * stride_dz
    lse = tl.load(lse_ptr + r)
    g = tl.load(g_ptr + r)
    for c0 in range(0, V, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        ok = cols < V
        z = tl.load(zrow + cols, mask=ok, other=0.0).to(tl.float32)
        dz = -g * tl.exp(z - lse)
        for k in tl.static_range(K):  # -100 (no target) never equals a column
            tk = tl.load(t_ptr + r * K + k)
            ck = tl.load(c_ptr + r * K + k)
            dz += tl.where(cols == tk, ck, 0.0)
        tl.store(dzrow + cols, dz.to(dz_ptr.dtype.element_ty), mask=ok)


def chunk_triton(h, w, t, grad_fn, need_h: bool, need_w: bool, dw, first: bool):
    """h (R, D), w (V, D) same dtype, t (R, K) long (-100 = none); grad_fn(logp (R, K)) -> c (R, K).
    -> dH (R, D) fp32 or None; dW written (first) or accumulated into dw (V, D) fp32."""
    (R, D), V, K = h.shape, w.shape[0], t.shape[1]
    dev = h.device
    z = torch.empty(R, V, dtype=torch.float32, device=dev)  # (R, V) the chunk's logits
    lt._mm_fp32_into(z, h, w.t())
    lse = torch.empty(R, dtype=torch.float32, device=dev)
    scratch = torch.empty(R, dtype=torch.float32, device=dev)  # the row kernel's log p of the first target set
    lt._row_lse_kernel[(R,)](z, t[:, 0].clamp(min=0).contiguous(), lse, scratch, V, z.stride(0),
                             BLOCK=lt.ROW_BLOCK, num_warps=lt.ROW_WARPS)
    logp = torch.where(t != -100, z.gather(1, t.clamp(min=0)) - lse[:, None], 0.0)  # (R, K)
    c = grad_fn(logp).float().contiguous()  # (R, K)
    if not (need_h or need_w):
        return None
    dz = z if w.dtype == torch.float32 else torch.empty(R, V, dtype=w.dtype, device=dev)
    _dz_kernel[(R,)](z, dz, t.contiguous(), c, lse, c.sum(dim=1).contiguous(), V, z.stride(0), dz.stride(0), K=K,
                     BLOCK=lt.ROW_BLOCK, num_warps=lt.ROW_WARPS)
    del z  # the 16-bit dZ alone from here on
    dh = None
    if need_h:
        dh = torch.empty(R, D, dtype=torch.float32, device=dev)
        lt._mm_fp32_into(dh, dz, w)  # (R, V) @ (V, D)
    if need_w:
        lt._mm_fp32_into(dw, dz.t(), h, accumulate=not first)  # (V, R) @ (R, D), fp32 accumulation across chunks
    return dh
