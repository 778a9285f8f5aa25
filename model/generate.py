"""Batched autoregressive generation for Llava with a preallocated KV cache: greedy, temperature, top-p (nucleus,
Holtzman et al. 2020). Bound to `Llava.generate`.

The prompt (left-padded, with its image features spliced in) is run once to fill the cache; then each step feeds
one token per row. A row that emitted EOS keeps receiving padding, which it alone sees, and stops changing.
"""
from __future__ import annotations

import torch

from .llama import KVCache


def sample_next(logits, temperature: float, top_p: float, generator=None):
    """logits (B, V) -> next ids (B,). temperature 0 = greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p: drop a token when the mass *before* it already does
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids, pixel_values=None, attention_mask=None, max_new_tokens: int = 32,
             temperature: float = 0.0, top_p: float = 1.0, eos_token_id=None, pad_token_id=None,
             generator: torch.Generator | None = None, min_new_tokens: int = 0):
    """Return the new tokens only, (B, N) with N <= max_new_tokens; after a row's EOS the rest is padding."""
    cfg = model.config
    eos = cfg.text.eos_token_id if eos_token_id is None else eos_token_id
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else eos)
    B, T = input_ids.shape
    if max_new_tokens <= 0:
        return input_ids.new_empty(B, 0)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    lm = model.language_model
    x = model.embed(input_ids, pixel_values)  # (B, T, D)
    c = cfg.text
    cache = KVCache(c.num_hidden_layers, B, c.num_key_value_heads, T + max_new_tokens, c.head_dim,
                    x.dtype, x.device)
    key_mask = torch.ones(B, T + max_new_tokens, dtype=torch.long, device=x.device)
    key_mask[:, :T] = attention_mask
    pos = model.position_ids(attention_mask)  # (B, T)
    h = lm(x, key_mask[:, :T], pos, cache)  # (B, T, D)
    next_pos = pos[:, -1:] + 1  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    out = []
    for step in range(max_new_tokens):
        logits = model.lm_head(h[:, -1])  # (B, V)
        if step < min_new_tokens:
            logits[:, eos] = float("-inf")
        tok = sample_next(logits, temperature, top_p, generator)
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        out.append(tok)
        done |= tok == eos
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        h = lm(lm.embed_tokens(tok[:, None]), key_mask[:, : T + step + 1], next_pos, cache)
        next_pos = next_pos + 1
    return torch.stack(out, dim=1)  # (B, N)
