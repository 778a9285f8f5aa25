"""CLIP-DPO's scoring and selection (Ouali et al. 2024, sec. 3), a helper of `hallucinate.py clip-rank`: each sampled
answer is cut into units (sentences, as CSR scores them, or comma / "and" phrases), each unit scored as
100 * cos(CLIP image embedding, CLIP text embedding) and pooled (mean, or min: an answer is as good as its worst-
supported unit); then rule-based filters pick the pair: empty, duplicate, chosen below a minimum score, length
ratio above a maximum, chosen - rejected margin below a minimum.

    scores = clip_scores(clip, clip_tokenizer, image_emb.expand(K, -1), answers)   # (K,)
    pair = rank_pairs(answers, scores.tolist(), min_score=0, min_margin=2, max_len_ratio=1.3, counts=Counter())
"""
from __future__ import annotations

import re
from collections import Counter

import torch


def split_sentences(text):
    return [x.strip() for x in re.split(r"(?<=[.!?])\s+", text.strip()) if x.strip(" .!?")]


def split_phrases(text):
    """Sentences further cut at commas, semicolons and " and ": one object phrase per unit in a listing ("with a
    cup , a fork and a plate ." -> three units), so one absent object is one poorly matching unit."""
    return [x.strip() for s in split_sentences(text) for x in re.split(r"\s*[,;]\s*|\s+and\s+", s)
            if x.strip(" .!?")]


def clip_text_ids(clip_cfg, ctok, text):
    """BOS + ids + EOS within CLIP's max positions. The pooled token is eos_token_id of the CLIP config; legacy
    configs (eos 2) pool at the largest id, which is the tokenizer's end-of-text, so its ids are used then."""
    legacy = clip_cfg.eos_token_id == 2
    bos = ctok.bos_id if legacy else clip_cfg.bos_token_id
    eos = ctok.eos_id if legacy else clip_cfg.eos_token_id
    head = [bos] if bos is not None else []
    return head + ctok.encode(text)[: clip_cfg.max_position_embeddings - len(head) - 1] + [eos]


@torch.no_grad()
def clip_scores(clip, ctok, image_emb, answers, unit: str = "sentence", pool: str = "mean"):
    """Per answer, 100 * cos(image, unit) pooled over its units: sentences (CSR's sentence-level scoring) or phrases
    (split_phrases), by mean or min (min: an answer is as good as its worst-supported unit, the hallucination-
    sensitive choice). image_emb (N, P): one row per answer, already normalised. An answer without any text scores
    -inf (the empty filter removes it first)."""
    import torch.nn.functional as F
    from model.tokenizer import pad_sequences
    cfg = clip.config.text
    sents, owner = [], []
    for i, ans in enumerate(answers):
        for sent in (split_phrases(ans) if unit == "phrase" else split_sentences(ans)):
            sents.append(clip_text_ids(cfg, ctok, sent))
            owner.append(i)
    scores = torch.full((len(answers),), float("-inf"))
    if not sents:
        return scores
    pad = cfg.pad_token_id if cfg.eos_token_id != 2 and cfg.pad_token_id is not None else sents[0][-1]
    ids, mask = pad_sequences(sents, pad, side="right")
    dev = image_emb.device
    txt = F.normalize(clip.encode_text(ids.to(dev), mask.to(dev)).float(), dim=-1)  # (n_sent, P)
    owner = torch.tensor(owner, device=dev)
    sim = 100 * (image_emb.float()[owner] * txt).sum(-1)  # (n_sent,)
    n = torch.bincount(owner, minlength=len(answers))
    if pool == "min":
        pooled = torch.full((len(answers),), float("inf"), device=dev).scatter_reduce_(0, owner, sim, "amin")
    else:
        pooled = torch.zeros(len(answers), device=dev).index_add_(0, owner, sim) / n.clamp(min=1)
    scores[n.cpu() > 0] = pooled[n > 0].cpu()
    return scores


def rank_pairs(answers, scores, min_score, min_margin, max_len_ratio, counts: Counter):
    """CLIP-DPO's rule-based selection for one image -> (chosen, rejected, s_c, s_r) or None. `counts` records how
    many candidates (or, for "item: ..." keys, images) each filter removed. By construction the pair satisfies
    s_c >= min_score, s_c - s_r >= min_margin, word-length ratio <= max_len_ratio, chosen != rejected, both non-empty."""
    cands, seen = [], set()
    for ans, sc in zip(answers, scores):
        norm = " ".join(ans.lower().split())
        if not split_sentences(ans):
            counts["empty"] += 1
        elif norm in seen:
            counts["duplicate"] += 1
        else:
            seen.add(norm)
            cands.append((ans, float(sc)))
    if len(cands) < 2:
        counts["item: fewer than 2 distinct answers"] += 1
        return None
    cands.sort(key=lambda x: -x[1])
    best = cands[0]
    if best[1] < min_score:
        counts["item: best below min score"] += 1
        return None
    for ans, sc in reversed(cands[1:]):  # the lowest-scored candidate within the length ratio
        lb, la = len(best[0].split()), len(ans.split())
        if max(lb, la) / min(lb, la) > max_len_ratio:
            counts["length ratio"] += 1
            continue
        if best[1] - sc < min_margin:  # the lowest passing one has the largest margin: no other can do better
            counts["item: margin below minimum"] += 1
            return None
        return best[0], ans, best[1], sc
    counts["item: no rejected within length ratio"] += 1
    return None
