"""A fused preference loss: DPO / POVID / RPO with the LM head's gradients formed in the forward (a helper of dpo.py).

Every loss of dpo.py (sigmoid DPO, Rafailov et al. 2023 eq. 7, with cDPO label smoothing; hinge; IPO; robust),
POVID's two-term objective and the RPO term is a sum over groups (pairs, or POVID's triples) of a function of each
sequence's summed response log-probs pi_s = sum_{(i,k) in s} log p(t_ik | h_i). So for a chunk of whole groups
the forward can hold the chunk's logits and, before dropping them, form everything backward needs:

    Z = H_c W^T                                   (R, V) fp32 logits of the chunk's rows                  GEMM 1
    lse_i = logsumexp_v Z_iv,   log p_ik = Z_i,t_ik - lse_i         (K target sets per row, -100 = none)
    pi_s = sum log p_ik;   L_c = sum_g loss_fn(pi_g, ref_g, n_g);   c_s = dL_c / dpi_s    (autograd on (g, M))
    dZ_iv = sum_k c_s(ik) [v = t_ik]  -  (sum_k c_s(ik)) softmax(Z_i)_v                  (exact chain rule)
    dH_c = dZ W                                                                                           GEMM 2
    dW  += dZ^T H_c                                   only when weight.requires_grad                      GEMM 3

and backward only multiplies the stored dH, dW by the upstream scalar. 3 GEMMs with a trainable head, 2 with a
frozen one (LoRA), where `sequence_logprobs` (model/logprob.py), which cannot know its upstream gradient, keeps no
logits and recomputes them: 4 and 2 + an online rescale. The chunking is that of Liger-Kernel's fused linear
preference losses, written from scratch; the loss itself stays plain torch (any `loss_fn`).

    loss, pi = fused_preference_loss(hidden, weight, targets, seq, groups, ref_logps, loss_fn, budget_bytes=None)

      hidden     (N, D) final-normed hidden rows (`pack` drops rows that score nothing)
      weight     (V, D) LM head; weight.requires_grad decides trainable (3 GEMMs) vs frozen head (2, no dW work)
      targets    (N, K) long, -100 = no target; K target sets per row (POVID: K = 2, the chosen token and the
                 noise-triggered token, both scored on the chosen rows' clean hidden states)
      seq        (N, K) long, the sequence each target belongs to (ignored where targets == -100)
      groups     (G, M) long, sequence ids of each group: M = 2 [chosen, rejected], M = 3 [chosen, injected, noise];
                 a sequence in at most one group, every scored sequence in one
      ref_logps  (S,) the reference's summed log-probs per sequence (no gradient)
      loss_fn    (pi (g, M), ref (g, M), n_tokens (g, M)) -> (g,) per-group losses, plain torch, differentiable in
                 pi; n_tokens = each sequence's scored-target count (train.preference_loss_fn builds train.py's from
                 dpo.py's losses).
      -> loss    scalar = the sum of the per-group losses, differentiable wrt hidden and weight
         pi      (S,) the policy's summed log-probs (detached; for rewards / logging)

Chunks are whole groups, packed in order while their logits workspace (rows x V x 4 bytes, + 2 for the 16-bit dZ
of the Triton path) fits `budget_bytes` (BUDGET: 64 MiB on CPU, 1 GiB on CUDA). A single group whose rows alone
exceed the budget falls back to the vocabulary-blocked recompute path of model/logprob.py: its log-probs in an
online logsumexp over vocabulary blocks, then its dH and dW by recomputing each block's logits (4 GEMMs, still in
the forward, still exact). The torch path runs everywhere (oneDNN GEMMs on CPU, via model.logprob._linear): it keeps
each vocabulary block's softmax and puts dZ's row scales on the small GEMM operands, so backward-side work never
makes a pass over the logits (_chunk_kept). On CUDA with triton the chunk's row passes run as Triton kernels
(dpo_fused_triton.py) around cuBLAS GEMMs.

What a trainer has maps onto it with `pack` and the group builders (train.py's Net.preference_loss):

    def loss_fn(pi, ref, n):                                # DPO; dpo.povid_loss for POVID's (g, 3) groups
        return dpo.dpo_loss(pi[:, 0], pi[:, 1], ref[:, 0], ref[:, 1], beta)[0]
    rows, tgt, seq = pack(h, labels)                        # DPO / CLIP-DPO: h (2P, T, D), labels (2P, T)
    loss, pi = fused_preference_loss(rows, lm_head.weight, tgt, seq, pair_groups(P), torch.cat([rc, rr]), loss_fn)
    rows, tgt, seq = pack(h, labels, noise_targets)          # POVID: noise targets (P, T) on the chosen rows
    loss, pi = fused_preference_loss(rows, lm_head.weight, tgt, seq, povid_groups(P), torch.cat([rc, rr, rn]), ...)
    chosen_rewards, rejected_rewards = rewards(pi, ref, groups, beta)

The reference log-probs are an input, so the reference pass (no grad) runs before the policy's; preference_logps
scores it with this module's kernels, so a reference with the policy's weights gets the policy's pi bit for bit.
Under DDP / FSDP call it inside the module's forward: it is one ordinary autograd Function (dH, dW computed in
forward, backward scales them once; a second backward through the same graph is an error).

    .venv/bin/python -m pytest -q tests/test_dpo_fused.py        # = the unfused composition, every loss
    .venv/bin/python bench/preference_loss.py [--device cuda]    # vs naive and vs sequence_logprobs + loss
"""
from __future__ import annotations

import torch

from dpo import shift_labels
from model.logprob import _in_block, _linear, _triton_ok

IGNORE = -100
BUDGET = {"cpu": 64 << 20, "cuda": 1 << 30}  # default logits workspace per chunk, bytes
KEEP_BLOCK_BYTES = 8 << 20  # CPU: kept softmax blocks and dW parts of at most this size (see _chunk_kept)


# ----------------------------------------------------------------------------------------------- building the inputs
def pack(hidden, labels, extra_labels=None, rows=None):
    """hidden (B, T, D) final-normed states, labels (B, T) aligned with the inputs (-100 = unscored), extra_labels
    (B2 <= B, T) an optional second target set on the first B2 sequences' rows (POVID's noise-triggered tokens),
    also aligned with the inputs. Sequence b's own targets belong to sequence b, its extra ones to sequence B + b.
    rows: the flat (B T) indices of the rows that score something, when the caller knows them on the host
    (train_data.scored_rows): then nothing is read back from the device.
    -> rows (M, D) (only rows that score something, differentiable), targets (M, K), seq (M, K), K = 1 or 2."""
    B, T, D = hidden.shape
    dev = labels.device
    tgt = shift_labels(labels).reshape(B * T, 1)  # (B T, 1): position t scores labels[t + 1]
    seq = torch.arange(B, device=dev).repeat_interleave(T)[:, None]  # (B T, 1)
    if extra_labels is not None:
        B2 = extra_labels.shape[0]
        if B2 > B or extra_labels.shape[1] != T:
            raise ValueError(f"extra_labels {tuple(extra_labels.shape)} must be (<= {B}, {T})")
        t2 = torch.full((B * T,), IGNORE, dtype=tgt.dtype, device=dev)
        t2[: B2 * T] = shift_labels(extra_labels).reshape(-1)
        tgt = torch.stack([tgt[:, 0], t2], 1)  # (B T, 2)
        seq = torch.stack([seq[:, 0], seq[:, 0] + B], 1)
    seq = torch.where(tgt != IGNORE, seq, -1)
    keep = (tgt != IGNORE).any(1).nonzero()[:, 0] if rows is None else rows  # (M,) image, prompt and padding rows
    # never reach the head
    return hidden.reshape(B * T, D).index_select(0, keep), tgt[keep], seq[keep]


def pair_groups(P: int, device=None):
    """[chosen; rejected] stacked along the batch (train.py's layout): group i = sequences (i, P + i). (P, 2)"""
    i = torch.arange(P, device=device)
    return torch.stack([i, i + P], 1)


def povid_groups(P: int, device=None):
    """POVID: group i = (chosen i, injected P + i, noise-triggered 2P + i), as `pack(h, labels, noise)` numbers
    them. (P, 3)"""
    i = torch.arange(P, device=device)
    return torch.stack([i, i + P, i + 2 * P], 1)


def rewards(pi, ref, groups, beta: float):
    """The logged implicit rewards of each group's first two sequences (POVID logs those of the injected term):
    beta (pi - ref) of chosen and of rejected, (G,) each, as dpo_loss returns them."""
    c, r = groups[:, 0], groups[:, 1]
    return beta * (pi[c] - ref[c]).detach(), beta * (pi[r] - ref[r]).detach()


# ----------------------------------------------------------------------------------------------- the chunk plan
def plan_chunks(targets, seq, groups, S: int, V: int, budget_rows: int, check: bool = True):
    """Whole groups packed in order into chunks of at most budget_rows rows; a group with more rows than that alone
    is a chunk of its own marked `fallback`. -> (chunks, n_tokens (S,)), each chunk a dict: groups (g,) ids,
    rows (R,) row ids or None (every row, in order), targets / seq (R, K) with the targets of other chunks' groups
    set to -100 (a row whose targets lie in two chunks' groups is computed in both), fallback bool. check=False:
    the caller vouches for the ids and that every row scores (pack's rows), so when all rows fit one chunk nothing
    is read back from the device (no host sync: the ids are not checked, the rows per group not counted)."""
    N, K = targets.shape
    G, M = groups.shape
    dev = targets.device
    valid = targets != IGNORE  # (N, K)
    n_tokens = torch.zeros(S, dtype=torch.long, device=dev).index_add_(  # (S,) scored targets per sequence
        0, seq.clamp(0, S - 1).reshape(-1), valid.reshape(-1).long())
    if not check and N <= budget_rows:
        return [dict(groups=torch.arange(G, device=dev), rows=None, targets=targets, seq=seq, fallback=False)], \
            n_tokens
    flat = groups.reshape(-1)  # (G M,)
    gid = torch.full((S,), -1, dtype=torch.long, device=dev)  # the group of each sequence
    gid[flat.clamp(0, S - 1)] = torch.arange(G, device=dev).repeat_interleave(M)
    tg = torch.where(valid, gid[seq.clamp(0, S - 1)], -1)  # (N, K) the group of each target
    rows_per_group = torch.zeros(G, dtype=torch.long, device=dev)
    for k in range(K):  # distinct (row, group) pairs: a row scoring two sequences of one group counts once
        new = valid[:, k] & (tg[:, k] >= 0)
        for j in range(k):
            new &= tg[:, j] != tg[:, k]
        rows_per_group += torch.bincount(tg[:, k][new], minlength=G)
    checks = torch.stack([(valid & ((targets < 0) | (targets >= V))).any(), (valid & ((seq < 0) | (seq >= S))).any(),
                          ((flat < 0) | (flat >= S)).any(), torch.bincount(flat.clamp(0, S - 1), minlength=S).max() > 1,
                          (valid & (tg < 0)).any(), valid.any(1).all()])
    *bad, every = checks.tolist()  # one host sync for every check
    counts = rows_per_group.tolist()
    for flag, msg in zip(bad, (f"targets must be in [0, {V}) or {IGNORE}", f"seq must be in [0, {S}) where scored",
                               f"groups must hold sequence ids in [0, {S})", "a sequence is in more than one group",
                               "a scored target's sequence is in no group")):
        if flag:
            raise ValueError(msg)
    packs, cur, cur_rows = [], [], 0
    for g, r in enumerate(counts):
        if r > budget_rows:  # alone too long for the workspace: the recompute path
            packs += [(cur, False)] if cur else []
            packs.append(([g], True))
            cur, cur_rows = [], 0
            continue
        if cur and cur_rows + r > budget_rows:
            packs.append((cur, False))
            cur, cur_rows = [], 0
        cur.append(g)
        cur_rows += r
    packs += [(cur, False)] if cur else []
    if len(packs) == 1 and every:  # the whole batch in one chunk: no gather, no masking
        return [dict(groups=torch.tensor(packs[0][0], device=dev), rows=None, targets=targets, seq=seq,
                     fallback=packs[0][1])], n_tokens
    chunk_of = torch.empty(G, dtype=torch.long, device=dev)
    for j, (gs, _) in enumerate(packs):
        chunk_of[gs] = j
    tc = torch.where(valid, chunk_of[tg.clamp(min=0)], -1)  # (N, K) the chunk of each target
    chunks = []
    for j, (gs, fallback) in enumerate(packs):
        mine = tc == j
        rows = mine.any(1).nonzero()[:, 0]  # (R,)
        chunks.append(dict(groups=torch.tensor(gs, device=dev), rows=rows, seq=seq[rows], fallback=fallback,
                           targets=torch.where(mine, targets, IGNORE)[rows]))
    return chunks, n_tokens


def _chunk_loss(logp, t, s, seqs, ref, n_tok, loss_fn, pi_out):
    """logp (R, K) of a chunk's targets (0 where none) -> its loss (scalar) and c (R, K) = dLoss / dlog p of each
    target, the gradient of the chunk's sequence the target belongs to; writes the chunk's pi into pi_out (S,)."""
    valid = t != IGNORE
    S = pi_out.shape[0]
    pi = torch.zeros(S, dtype=torch.float32, device=logp.device).index_put_(  # zeros added where no target
        (s.clamp(min=0).reshape(-1),), torch.where(valid, logp, 0.0).reshape(-1), accumulate=True)
    with torch.enable_grad():
        leaf = pi.requires_grad_()
        per_group = loss_fn(leaf[seqs], ref[seqs], n_tok[seqs])  # (g,)
        if per_group.shape != seqs.shape[:1]:
            raise ValueError(f"loss_fn must return one loss per group, ({seqs.shape[0]},); got "
                             f"{tuple(per_group.shape)}")
        loss = per_group.float().sum()
        (c_seq,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    if c_seq is None:  # a loss that does not depend on the policy
        c_seq = torch.zeros_like(pi)
    pi_out[seqs.reshape(-1)] = pi.detach()[seqs.reshape(-1)]
    return loss.detach(), torch.where(valid, c_seq[s.clamp(min=0)], 0.0)


# ----------------------------------------------------------------------------------------------- the torch path
def _logits(h, w):
    """(R, D) @ (n, D)^T -> (R, n) fp32 logits: oneDNN on CPU fp32 (model.logprob._linear); on CUDA 16-bit operands
    with an fp32 output from cuBLAS, so the logits are never rounded to 16 bits."""
    if h.is_cuda and h.dtype != torch.float32:
        return torch.mm(h, w.t(), out_dtype=torch.float32)
    return _linear(h, w)


def _chunk_kept(h, w, t, grad_fn, need_h, need_w, dw, first: bool, block: int, ws, tbuf):
    """A chunk within the budget on the torch path: h (R, D), w (V, D), t (R, K). The vocabulary in blocks of
    `block` columns; each block's logits become its softmax p_b (one fused pass) and its own logsumexp lse_b, kept
    until c is known. Then, with a_b = g exp(lse_b - lse) the weight of block b's softmax in dZ = onehot c - a p,
    the row scale goes on the small operands instead of a pass over p_b:

        dH_c = sum_b -a_b (p_b W_b) + sum_k c_k W[t_k]        dW_b = p_b^T (-a_b H_c),  dW[t_k] += c_k h
    The softmax blocks live in `ws` (flat, >= R V fp32, one per call: block b at R v0, contiguous (R, n)) and the
    transposed copy in `tbuf` (>= n R), so no chunk allocates or faults in its logits anew. The GEMMs' outputs are
    fresh tensors (oneDNN has no out=), of at most KEEP_BLOCK_BYTES each so glibc's heap reuses them.
    -> dH (R, D) fp32 or None; dW written (first) or accumulated into dw."""
    (R, D), V = h.shape, w.shape[0]
    dev = h.device
    valid = t != IGNORE
    tl = torch.zeros(t.shape, device=dev)  # (R, K) target logits
    starts = list(range(0, V, block))
    probs, lses = [], []
    for v0 in starts:  # forward: logits -> softmax per block (kept) and each block's logsumexp
        wb = w[v0:v0 + block]  # (n, D)
        z = _logits(h, wb)  # (R, n) fp32
        for k in range(t.shape[1]):
            inside, cols = _in_block(t[:, k], v0, wb.shape[0])
            tl[:, k] = torch.where(inside, z.gather(1, cols)[:, 0], tl[:, k])
        p = torch.softmax(z, dim=1, out=ws[R * v0:R * (v0 + wb.shape[0])].view(R, -1))  # (R, n) exp(z - lse_b)
        p_max, j = p.max(dim=1)  # at the row's max logit, so lse_b = z_max - log p_max keeps full precision
        lses.append(z.gather(1, j[:, None])[:, 0] - p_max.log())
        probs.append(p)
        del z
    lse_b = torch.stack(lses, 1)  # (R, blocks)
    lse = torch.logsumexp(lse_b, dim=1)  # (R,)
    c = grad_fn(torch.where(valid, tl - lse[:, None], 0.0))  # (R, K)
    if not (need_h or need_w):
        return None
    a = c.sum(dim=1)[:, None] * (lse_b - lse[:, None]).exp()  # (R, blocks)
    fp32 = h.dtype == torch.float32 and w.dtype == torch.float32
    hf = h if fp32 else h.float()  # 16-bit inputs: backward GEMMs in fp32, as model/logprob.py's blocked_backward
    dh = torch.zeros(R, D, device=dev) if need_h else None
    for i, v0 in enumerate(starts):
        wb = w[v0:v0 + block]
        p, probs[i] = probs[i], None
        if need_h:
            dh.sub_(_linear(p, (wb if fp32 else wb.float()).t()).mul_(a[:, i:i + 1]))  # (R, n) @ (n, D)
        if need_w:  # (n, R) @ (R, D); the transposed copy: oneDNN runs a transposed x much slower
            part = _linear(tbuf[:p.numel()].view(p.shape[1], R).copy_(p.t()), (hf * -a[:, i:i + 1]).t())
            if first:
                dw[v0:v0 + wb.shape[0]] = part
            else:
                dw[v0:v0 + wb.shape[0]] += part
        del p
    tv, cv = t.clamp(min=0), torch.where(valid, c, 0.0)  # the onehot part: R K rows of D gathered and scattered,
    for k in range(t.shape[1]):  # c = 0 where a row has no k-th target (a shape fixed on the host: no sync)
        if need_h:
            dh += cv[:, k:k + 1] * (w[tv[:, k]] if fp32 else w[tv[:, k]].float())
        if need_w:
            dw.index_put_((tv[:, k],), cv[:, k:k + 1] * hf, accumulate=True)
    return dh


def _chunk_recompute(h, w, t, grad_fn, need_h, need_w, dw, first: bool, block: int):
    """The fallback for a group whose rows alone exceed the budget: model/logprob.py's vocabulary-blocked recompute
    path with K targets per row and the loss's gradient formed in between. Forward: an online logsumexp over
    `block`-column blocks (nothing kept); then per block, recomputed: dZ = onehot c - g softmax, dH += dZ W_b,
    dW_b = dZ^T H (4 GEMMs with a trainable head). Same outputs as _chunk_kept."""
    (R, D), V, K = h.shape, w.shape[0], t.shape[1]
    dev = h.device
    m = torch.full((R,), float("-inf"), device=dev)  # running max
    s = torch.zeros(R, device=dev)  # running sum of exp(logit - m)
    tl = torch.zeros(R, K, device=dev)
    for v0 in range(0, V, block):
        wb = w[v0:v0 + block]
        z = _logits(h, wb)  # (R, n)
        for k in range(K):
            inside, cols = _in_block(t[:, k], v0, wb.shape[0])
            tl[:, k] = torch.where(inside, z.gather(1, cols)[:, 0], tl[:, k])
        m_new = torch.maximum(m, z.amax(dim=1))
        s = s * (m - m_new).exp() + z.sub_(m_new[:, None]).exp_().sum(dim=1)
        m = m_new
        del z
    lse = m + s.log()
    c = grad_fn(torch.where(t != IGNORE, tl - lse[:, None], 0.0))  # (R, K)
    if not (need_h or need_w):
        return None
    g = c.sum(dim=1)
    fp32 = h.dtype == torch.float32 and w.dtype == torch.float32
    hf = h if fp32 else h.float()
    dh = torch.zeros(R, D, device=dev) if need_h else None
    for v0 in range(0, V, block):
        wb = w[v0:v0 + block]
        n = wb.shape[0]
        dz = _logits(h, wb).sub_(lse[:, None]).exp_().mul_(-g[:, None])  # recomputed: -g softmax
        for k in range(K):
            inside, cols = _in_block(t[:, k], v0, n)
            dz.scatter_add_(1, cols, (c[:, k] * inside)[:, None])  # + c_k onehot(t_k); k may hit the same column
        if need_h:
            dh += _linear(dz, (wb if fp32 else wb.float()).t())  # (R, n) @ (n, D)
        if need_w:
            part = _linear(dz.t().contiguous(), hf.t())  # (n, R) @ (R, D)
            if first:
                dw[v0:v0 + n] = part
            else:
                dw[v0:v0 + n] += part
        del dz
    return dh


def _keep_cols(R: int, D: int, V: int) -> int:
    """Columns per block on the CPU path: each block's softmax (R, n) and its dW part (n, D) at most
    KEEP_BLOCK_BYTES, so both come from glibc's heap (reused) rather than a fresh mmap per call; at least 256
    columns (GEMM speed)."""
    return min(V, max(256, KEEP_BLOCK_BYTES // (4 * max(R, D))))


# ----------------------------------------------------------------------------------------------- the function
class _FusedPreferenceLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, ref, n_tok, loss_fn, chunks, need_h: bool, need_w: bool, use_triton: bool,
                budget: int):
        (N, D), V = hidden.shape, weight.shape[0]
        dev = hidden.device
        S = ref.shape[0]
        pi = torch.zeros(S, dtype=torch.float32, device=dev)
        total = torch.zeros((), dtype=torch.float32, device=dev)
        dh = None
        dw = torch.empty(V, D, dtype=torch.float32, device=dev) if need_w else None
        dw_written = False
        if use_triton:
            from dpo_fused_triton import chunk_triton
        else:  # the torch path's workspaces, sized by the largest chunk: its softmax blocks, one transposed block
            r_max = max([len(c["targets"]) for c in chunks if not c["fallback"]], default=0)
            block = _keep_cols(r_max, D, V)
            ws = torch.empty(r_max * V, device=dev)
            tbuf = torch.empty(r_max * block if need_w else 0, device=dev)
        with torch.autocast(dev.type, enabled=False):  # the GEMMs run in the inputs' dtype, reductions in fp32
            for ch in chunks:
                rows, t, s = ch["rows"], ch["targets"], ch["seq"]
                seqs = ch["seqs"]  # (g, M) the chunk's groups
                loss_box = []

                def grad_fn(logp, t=t, s=s, seqs=seqs, loss_box=loss_box):
                    loss, c = _chunk_loss(logp, t, s, seqs, ref, n_tok, loss_fn, pi)
                    loss_box.append(loss)
                    return c

                h = hidden if rows is None else hidden.index_select(0, rows)  # (R, D)
                if h.shape[0] == 0:  # groups that score nothing: a loss value, no gradient
                    grad_fn(torch.zeros(t.shape, device=dev))
                    dh_c = None
                elif ch["fallback"]:
                    dh_c = _chunk_recompute(h, weight, t, grad_fn, need_h, need_w, dw, not dw_written,
                                            min(_keep_cols(h.shape[0], D, V), max(256, budget // (4 * len(h)))))
                    dw_written |= need_w
                elif not use_triton:
                    dh_c = _chunk_kept(h, weight, t, grad_fn, need_h, need_w, dw, not dw_written, block, ws, tbuf)
                    dw_written |= need_w
                else:
                    dh_c = chunk_triton(h, weight, t, grad_fn, need_h, need_w, dw, not dw_written)
                    dw_written |= need_w
                total += loss_box[0]
                if dh_c is not None:
                    if rows is None:
                        dh = dh_c
                    else:
                        dh = torch.zeros(N, D, device=dev) if dh is None else dh
                        dh.index_put_((rows,), dh_c, accumulate=True)  # (index_add_ is 10x slower on CPU)
        if need_h and dh is None:
            dh = torch.zeros(N, D, device=dev)
        if need_w and not dw_written:
            dw.zero_()
        ctx.grads = (dh, dw)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(pi)
        return total, pi

    @staticmethod
    def backward(ctx, g, _g_pi):
        if ctx.grads is None:
            raise RuntimeError("fused_preference_loss: backward ran twice through the same graph; its gradients are "
                               "formed in the forward and scaled in place once (call it again for a second backward)")
        dh, dw = ctx.grads
        ctx.grads = None  # hand the buffers over: autograd takes them as .grad without a copy
        g = g.float()
        gh = dh.mul_(g).to(ctx.dtypes[0]) if dh is not None and ctx.needs_input_grad[0] else None
        gw = dw.mul_(g).to(ctx.dtypes[1]) if dw is not None and ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None, None, None, None, None


def fused_preference_loss(hidden, weight, targets, seq, groups, ref_logps, loss_fn, budget_bytes: int | None = None,
                          use_triton: bool | None = None, check: bool = True):
    """The whole preference loss of (N, D) hidden rows in one pass: -> (loss scalar, pi (S,) detached). See the
    module docstring for the arguments. targets / seq may be (N,) for K = 1. hidden is cast to weight's dtype (the
    head's GEMMs run in it, autocast off; logits, log-probs and the loss in fp32). use_triton: None = the Triton
    row kernels on CUDA when triton is installed, False = the torch path, True = Triton (also CPU tensors under
    TRITON_INTERPRET=1). check=False: the caller (train.py) vouches for the ids, so no host sync (plan_chunks)."""
    if targets.dim() == 1:
        targets, seq = targets[:, None], seq[:, None]
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} must be (N, D), (V, D)")
    if targets.shape != seq.shape or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"targets {tuple(targets.shape)} and seq {tuple(seq.shape)} must both be "
                         f"({hidden.shape[0]}, K)")
    if groups.dim() != 2 or ref_logps.dim() != 1:
        raise ValueError(f"groups {tuple(groups.shape)} must be (G, M), ref_logps {tuple(ref_logps.shape)} (S,)")
    V, S = weight.shape[0], ref_logps.shape[0]
    if use_triton is None:
        use_triton = hidden.is_cuda and _triton_ok()
    if hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    grad = torch.is_grad_enabled()
    need_h, need_w = grad and hidden.requires_grad, grad and weight.requires_grad
    per_row = V * (4 + (weight.element_size() if use_triton and weight.dtype != torch.float32 else 0))
    budget = budget_bytes or BUDGET["cuda" if hidden.is_cuda else "cpu"]
    chunks, n_tok = plan_chunks(targets, seq, groups, S, V, max(1, budget // per_row), check)
    for ch in chunks:
        ch["seqs"] = groups[ch["groups"]]  # (g, M)
    ref = ref_logps.detach().float()
    return _FusedPreferenceLoss.apply(hidden, weight, ref, n_tok, loss_fn, chunks, need_h, need_w, use_triton,
                                      budget)


def preference_logps(hidden, weight, targets, seq, groups, budget_bytes: int | None = None,
                     use_triton: bool | None = None, check: bool = True):
    """pi (S,) alone, S = groups.numel(), with no gradient: the forward of fused_preference_loss (the same chunks and
    kernels), so it equals the pi that call returns on the same inputs bit for bit. train.py's reference pass."""
    ref = torch.zeros(groups.numel(), device=hidden.device)
    with torch.no_grad():
        return fused_preference_loss(hidden, weight, targets, seq, groups, ref, _no_loss, budget_bytes, use_triton,
                                     check)[1]


def _no_loss(pi, ref, n):
    return (pi * 0).sum(1)  # zero, yet a function of pi: the chunk's autograd call stays well-formed


def unfused_preference_loss(hidden, weight, targets, seq, groups, ref_logps, loss_fn, use_triton: bool | None = None):
    """The same loss composed from model/logprob.py's sequence_logprobs (one call per target set) and loss_fn, for
    tests and benchmarks: what train.py's --fused_loss=False runs."""
    from model.logprob import sequence_logprobs
    if targets.dim() == 1:
        targets, seq = targets[:, None], seq[:, None]
    S = ref_logps.shape[0]
    pi = torch.zeros(S, dtype=torch.float32, device=hidden.device)
    for k in range(targets.shape[1]):
        lp = sequence_logprobs(hidden, weight, targets[:, k], use_triton=use_triton)  # (N,) 0 where unscored
        pi = pi.index_add(0, seq[:, k].clamp(min=0), lp)
    valid = targets != IGNORE
    n_tok = torch.bincount(seq[valid], minlength=S)
    ref = ref_logps.detach().float()
    return loss_fn(pi[groups], ref[groups], n_tok[groups]).sum(), pi.detach()
