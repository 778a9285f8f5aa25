"""The CUDA path of `sequence_logprobs`: a Triton kernel that fuses the LM-head matmul with an online logsumexp and
the target gather, so the (rows, V) logits never reach global memory in the forward (the idea of Cut Cross-Entropy,
Wijmans et al. 2024, written from scratch; lock-free and deterministic), and a backward of cuBLAS GEMMs around a
Triton row kernel.

Forward, one program per (BLOCK_M rows) x (BLOCK_V vocabulary rows) tile, programs grouped so that those running
together share the same W slice in L2:

    z = h_tile @ W_tile^T                            (BLOCK_M, BLOCK_V) fp32, a K-loop over D in BLOCK_D steps
    m_j = rowmax(z),  s_j = rowsum(exp(z - m_j))     written to a (V tiles, M) fp32 buffer: 2 x 4 B per row and tile
    t = z[row, target]                               written by the one tile that holds the target
then  lse = logsumexp_j(m_j + log s_j),  log p = t - lse      (O(rows) torch ops over the small buffer)

Backward (trainable head), the vocabulary in blocks (an (M, block) 16-bit workspace, WORKSPACE x the size of hidden):

    z = H @ W_block^T                                cuBLAS, recomputed
    dZ = g * (onehot(target) - exp(z - lse))         the row kernel, in place
    dH += dZ @ W_block                               cuBLAS, fp32 output accumulated in place
    dW[block] = dZ^T @ H                             cuBLAS, each block written once (fp32 accumulation inside)
FLOPs: 2 N V D forward + 6 N V D backward, the 1.33x over the bare GEMMs that keeping no logits costs.

Frozen head (LoRA): the forward runs in row chunks (cuBLAS logits into a workspace, the row kernels for lse and
onehot - p, then (onehot - p) @ W in fp32), so backward only scales rows by g: 4 N V D, no recompute.

Imported lazily, only when CUDA and triton are present. Triton's interpreter (TRITON_INTERPRET=1) runs the same
kernels on CPU tensors, which is how tests/test_logprob.py checks them on a machine without a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# (BLOCK_M, BLOCK_V, BLOCK_D, GROUP_M, num_warps, num_stages). bf16/fp16: measured on an H100 with bench/logprob.py
# --sweep (README); fp32 runs the dot in full fp32 ("ieee", matching torch's default matmul), so smaller tiles.
CONFIGS = {torch.bfloat16: (128, 256, 64, 8, 8, 3), torch.float16: (128, 256, 64, 8, 8, 3),
           torch.float32: (64, 64, 32, 8, 4, 2)}


@triton.jit
def _tile_ids(M, V, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's (row tile, vocabulary tile): GROUP_M row tiles walk the vocabulary together, so the W tiles
    that programs running at the same time need are read from L2, not from memory."""
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    per_group = GROUP_M * tl.cdiv(V, BLOCK_V)
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(n_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_rows, (pid % per_group) // group_rows


@triton.jit
def _lse_epilogue(z, pid_m, pid_v, t_ptr, part_m_ptr, part_s_ptr, tgt_ptr, M, V,
                  BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    """z (BLOCK_M, BLOCK_V) fp32 logits of this tile -> its row max and sum of exp, and the target logits it holds."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # (BLOCK_V,)
    row_ok = rows < M
    z = tl.where((cols < V)[None, :], z, float("-inf"))  # padding columns take no probability mass
    m = tl.max(z, axis=1)  # (BLOCK_M,) finite: every tile holds at least one real column
    s = tl.sum(tl.exp(z - m[:, None]), axis=1)  # >= 1
    tl.store(part_m_ptr + pid_v * M + rows, m, mask=row_ok)  # (V tiles, M) layout: coalesced stores
    tl.store(part_s_ptr + pid_v * M + rows, s, mask=row_ok)
    target = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    hit = cols[None, :] == target[:, None]  # (BLOCK_M, BLOCK_V): at most one True per row
    t = tl.sum(tl.where(hit, z, 0.0), axis=1)
    tl.store(tgt_ptr + rows, t, mask=row_ok & (tl.max(hit.to(tl.int32), axis=1) > 0))


@triton.jit
def _forward_kernel(h_ptr, w_ptr, t_ptr, part_m_ptr, part_s_ptr, tgt_ptr, M, V, D,
                    stride_hm, stride_hd, stride_wv, stride_wd,
                    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_M: tl.constexpr,
                    PRECISION: tl.constexpr):
    """Pointer loads: any strides and dtypes."""
    pid_m, pid_v = _tile_ids(M, V, BLOCK_M, BLOCK_V, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    rk = tl.arange(0, BLOCK_D)
    # out-of-range rows / columns load a valid (wrapped) row instead of being masked: no mask in the K-loop, and
    # their results are never stored
    h_ptrs = h_ptr + (rows % M)[:, None] * stride_hm + rk[None, :] * stride_hd  # (BLOCK_M, BLOCK_D)
    w_ptrs = w_ptr + (cols % V)[None, :] * stride_wv + rk[:, None] * stride_wd  # (BLOCK_D, BLOCK_V): W^T tile
    acc = tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        k_ok = rk < D - d0
        h = tl.load(h_ptrs, mask=k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(h, w, acc, input_precision=PRECISION)
        h_ptrs += BLOCK_D * stride_hd
        w_ptrs += BLOCK_D * stride_wd
    _lse_epilogue(acc, pid_m, pid_v, t_ptr, part_m_ptr, part_s_ptr, tgt_ptr, M, V, BLOCK_M, BLOCK_V)


@triton.jit
def _forward_kernel_tma(h_desc, w_desc, t_ptr, part_m_ptr, part_s_ptr, tgt_ptr, M, V, D,
                        BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_M: tl.constexpr,
                        PRECISION: tl.constexpr):
    """Tensor-descriptor (TMA) loads on Hopper and later: the copy engine fetches the tiles, zero-filling past the
    edges. Needs contiguous rows at 16-byte aligned addresses."""
    pid_m, pid_v = _tile_ids(M, V, BLOCK_M, BLOCK_V, GROUP_M)
    acc = tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        h = h_desc.load([pid_m * BLOCK_M, d0])  # (BLOCK_M, BLOCK_D)
        w = w_desc.load([pid_v * BLOCK_V, d0])  # (BLOCK_V, BLOCK_D)
        acc = tl.dot(h, w.T, acc, input_precision=PRECISION)
    _lse_epilogue(acc, pid_m, pid_v, t_ptr, part_m_ptr, part_s_ptr, tgt_ptr, M, V, BLOCK_M, BLOCK_V)


@triton.jit
def _row_lse_kernel(z_ptr, t_ptr, lse_ptr, logp_ptr, V, stride_z, BLOCK: tl.constexpr):
    """One program per row of materialised logits z (rows, V): online logsumexp, then log p(target)."""
    r = tl.program_id(0)
    row = z_ptr + r.to(tl.int64) * stride_z
    m = tl.max(tl.full((BLOCK,), float("-inf"), tl.float32), axis=0)  # scalar running max
    s = tl.sum(tl.zeros((BLOCK,), tl.float32), axis=0)
    for v0 in range(0, V, BLOCK):
        cols = v0 + tl.arange(0, BLOCK)
        z = tl.load(row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    tl.store(lse_ptr + r, lse)
    tl.store(logp_ptr + r, tl.load(row + tl.load(t_ptr + r)).to(tl.float32) - lse)


@triton.jit
def _row_grad_kernel(z_ptr, t_ptr, lse_ptr, g_ptr, V, stride_z, v0, BLOCK: tl.constexpr):
    """In place, one program per row: z (rows, V) logits of vocabulary [v0, v0 + V) -> g * (onehot - softmax)."""
    r = tl.program_id(0)
    row = z_ptr + r.to(tl.int64) * stride_z
    lse = tl.load(lse_ptr + r)
    g = tl.load(g_ptr + r)
    target = tl.load(t_ptr + r) - v0
    for c0 in range(0, V, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        z = tl.load(row + cols, mask=cols < V, other=0.0).to(tl.float32)
        dz = (tl.where(cols == target, 1.0, 0.0) - tl.exp(z - lse)) * g
        tl.store(row + cols, dz.to(z_ptr.dtype.element_ty), mask=cols < V)


def _tma_ok(x):
    """A 2-D tensor the copy engine can read: contiguous rows, 16-byte aligned start and row pitch, on a GPU that has
    one (compute capability 9 and up; the interpreter emulates it on CPU tensors)."""
    return (x.stride(1) == 1 and (x.stride(0) * x.element_size()) % 16 == 0 and x.data_ptr() % 16 == 0
            and (not x.is_cuda or torch.cuda.get_device_capability(x.device)[0] >= 9))


def lse_and_logprob(hidden, weight, targets, config=None):
    """hidden (M, D), weight (V, D), targets (M,) all valid -> (lse (M,), logp (M,)) fp32, logits never stored."""
    M, D = hidden.shape
    V = weight.shape[0]
    bm, bv, bd, group, warps, stages = config or CONFIGS[hidden.dtype]
    n_v = triton.cdiv(V, bv)
    part_m = torch.empty(n_v, M, dtype=torch.float32, device=hidden.device)  # (V tiles, M)
    part_s = torch.empty_like(part_m)
    tgt = torch.empty(M, dtype=torch.float32, device=hidden.device)
    grid = (triton.cdiv(M, bm) * n_v,)
    precision = "ieee" if hidden.dtype == torch.float32 else "tf32"  # the latter is ignored for 16-bit inputs
    tiles = dict(BLOCK_M=bm, BLOCK_V=bv, BLOCK_D=bd, GROUP_M=group, PRECISION=precision, num_warps=warps,
                 num_stages=stages)
    if FORWARD == "tma" and _tma_ok(hidden) and _tma_ok(weight):
        from triton.tools.tensor_descriptor import TensorDescriptor
        _forward_kernel_tma[grid](TensorDescriptor.from_tensor(hidden, [bm, bd]),
                                  TensorDescriptor.from_tensor(weight, [bv, bd]),
                                  targets, part_m, part_s, tgt, M, V, D, **tiles)
    else:
        _forward_kernel[grid](hidden, weight, targets, part_m, part_s, tgt, M, V, D, hidden.stride(0),
                              hidden.stride(1), weight.stride(0), weight.stride(1), **tiles)
    lse = torch.logsumexp(part_m + part_s.log(), dim=0)  # (M,)
    return lse, tgt - lse


ROW_BLOCK, ROW_WARPS = 4096, 8  # the row kernels: vocabulary entries per step, warps per row
# The forward's kernel: "tma" (the fused tile kernel loading through tensor descriptors; where the inputs or the GPU
# do not allow it, the same kernel with pointer loads), "tile" (always pointer loads) or "rows" (cuBLAS into a
# workspace, then the row kernel; what the frozen-head forward does). WORKSPACE: the (rows, V) and (M, columns)
# workspaces of the row-chunked steps, as a multiple of the size of `hidden`. Defaults measured on an H100 with
# bench/logprob.py --sweep (README).
FORWARD = "tma"
WORKSPACE = 2


def _mm_fp32_into(out, a, b, accumulate: bool = False):
    """out (fp32) = a @ b, or += with accumulate, with fp32 accumulation also for 16-bit operands."""
    if a.dtype == torch.float32:
        return out.addmm_(a, b) if accumulate else torch.mm(a, b, out=out)
    if a.is_cuda:  # cuBLAS: 16-bit operands, fp32 output, accumulated in place (beta = 1)
        if accumulate:
            return torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
        return torch.mm(a, b, out_dtype=torch.float32, out=out)
    prod = a.float() @ b.float()  # the interpreter on CPU, where mm has no out_dtype
    return out.add_(prod) if accumulate else out.copy_(prod)


def forward_rows(hidden, weight, targets, unit_grad: bool):
    """Row chunks through cuBLAS: z = h_c W^T into a (c, V) workspace (WORKSPACE x hidden), then one row kernel for
    lse and log p; with unit_grad (a frozen head) also dh_unit = (onehot - p) W in fp32, so backward only scales it.
    -> lse (M,), logp (M,), dh_unit (M, D) or None"""
    M, D = hidden.shape
    V = weight.shape[0]
    c = min(M, max(128, WORKSPACE * M * D // V))
    ws = torch.empty(c * V, dtype=hidden.dtype, device=hidden.device)
    lse = torch.empty(M, dtype=torch.float32, device=hidden.device)
    logp = torch.empty_like(lse)
    dh_unit = torch.empty(M, D, dtype=torch.float32, device=hidden.device) if unit_grad else None
    ones = torch.ones(c, dtype=torch.float32, device=hidden.device) if unit_grad else None  # g = 1: the unit dH
    for s in range(0, M, c):
        n = min(c, M - s)
        z = torch.mm(hidden[s:s + n], weight.t(), out=ws[: n * V].view(n, V))  # (n, V)
        _row_lse_kernel[(n,)](z, targets[s:], lse[s:], logp[s:], V, V, BLOCK=ROW_BLOCK, num_warps=ROW_WARPS)
        if unit_grad:
            _row_grad_kernel[(n,)](z, targets[s:], lse[s:], ones, V, V, 0, BLOCK=ROW_BLOCK, num_warps=ROW_WARPS)
            _mm_fp32_into(dh_unit[s:s + n], z, weight)
    return lse, logp, dh_unit


def backward(hidden, weight, targets, lse, g, need_h: bool, need_w: bool):
    """(dH, dW) of sum_i g_i log p_i. Per vocabulary block (an (M, block) workspace): cuBLAS recomputes the logits,
    the row kernel turns them into dZ in place, then dH += dZ W_block (fp32, accumulated by cuBLAS) and
    dW_block = dZ^T H (written once)."""
    M, D = hidden.shape
    V = weight.shape[0]
    vb = min(V, max(256, WORKSPACE * D))
    flat = torch.empty(M * vb, dtype=hidden.dtype, device=hidden.device)  # one workspace for every block
    dh = torch.zeros(M, D, dtype=torch.float32, device=hidden.device) if need_h else None
    dw = torch.empty_like(weight) if need_w else None
    g = g.float().contiguous()
    for v0 in range(0, V, vb):
        w = weight[v0:v0 + vb]  # (n, D)
        n = w.shape[0]
        dz = torch.mm(hidden, w.t(), out=flat[: M * n].view(M, n))  # (M, n) recomputed logits, then in place:
        _row_grad_kernel[(M,)](dz, targets, lse, g, n, n, v0, BLOCK=ROW_BLOCK, num_warps=ROW_WARPS)  # g(1_t - p)
        if need_h:
            _mm_fp32_into(dh, dz, w, accumulate=True)
        if need_w:
            torch.mm(dz.t(), hidden, out=dw[v0:v0 + n])  # each dW block written once (fp32 accumulation inside)
    return (dh.to(hidden.dtype) if need_h else None), dw


class _TritonLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets):
        ctx.fused = ctx.needs_input_grad[0] and not ctx.needs_input_grad[1]  # frozen head: dH now, scale later
        dh_unit = None
        if ctx.fused:
            lse, logp, dh_unit = forward_rows(hidden, weight, targets, unit_grad=True)
        elif FORWARD == "rows":  # otherwise the fused kernel
            lse, logp, _ = forward_rows(hidden, weight, targets, unit_grad=False)
        else:
            lse, logp = lse_and_logprob(hidden, weight, targets)
        ctx.save_for_backward(hidden, weight, targets, lse, dh_unit)
        return logp

    @staticmethod
    def backward(ctx, g):
        hidden, weight, targets, lse, dh_unit = ctx.saved_tensors
        if ctx.fused:
            return (dh_unit * g.float()[:, None]).to(hidden.dtype), None, None
        dh, dw = backward(hidden, weight, targets, lse, g, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return dh, dw, None


def triton_sequence_logprobs(hidden, weight, targets):
    """Scored rows only (the caller gathers them): (M, D), (V, D), (M,) -> (M,) fp32 log p(target)."""
    return _TritonLogprob.apply(hidden, weight, targets)
