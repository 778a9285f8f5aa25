"""Batched autoregressive generation for Llava with a preallocated KV cache: greedy, temperature, top-p (nucleus,
Holtzman et al. 2020). Bound to `Llava.generate`.

The prompt (left-padded, with its image features spliced in) is run once to fill the cache; then each step feeds
one token per row. With `samples=K` (CLIP-DPO's K answers per image) the K rows of a prompt share its prefill and
its cached keys and values (model/llama.py KVCache). A row that emitted EOS keeps receiving padding, which it alone
sees, and stops changing.

Sampling is inverse-CDF: a row's token at step i is the first one whose cumulative probability exceeds u[row, i],
a uniform drawn before the loop. With one generator per row (`row_generators(seed, keys)`, keys = item ids) a
row's draws depend on its own (seed, key) alone, so an item gets the same answer in any batch, at any position,
and in a run resumed after a kill:

    gens = row_generators(seed=0, keys=["q17", "q18"])          # CPU generators: the same draws on any device
    out = model.generate(ids, px, mask, temperature=0.2, generator=gens)
"""
from __future__ import annotations

import hashlib

import torch

from .llama import KVCache


def row_seed(seed: int, key: str) -> int:
    """A 63-bit seed from (run seed, item key): stable across processes and Python versions (unlike hash())."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def row_generators(seed: int, keys, device="cpu") -> list[torch.Generator]:
    """One seeded torch.Generator per row, for `generate(..., generator=...)`."""
    return [torch.Generator(device=device).manual_seed(row_seed(seed, str(k))) for k in keys]


def uniforms(rows: int, steps: int, generator, device):
    """(rows, steps) uniforms in [0, 1): from one generator for the whole batch (a row's draws then depend on the
    batch it is in), or from one generator per row (they depend on that row's generator alone)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != rows:
            raise ValueError(f"generator: {len(generator)} per-row generators for {rows} rows")
        u = torch.stack([torch.rand(steps, generator=g, device=g.device) for g in generator])
    else:
        u = torch.rand(rows, steps, generator=generator,
                       device=generator.device if generator is not None else device)
    return u.to(device)


def sample_next(logits, temperature: float, top_p: float, u=None):
    """logits (B, V), u (B,) uniforms in [0, 1) -> next ids (B,). temperature 0 = greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p: drop a token when the mass *before* it already does
        probs = probs.masked_fill((probs.cumsum(-1) - probs) >= top_p, 0.0)
    cdf = probs.cumsum(-1)  # (B, V), unnormalised: the top-p cut removed mass
    u = torch.rand(len(cdf), device=cdf.device) if u is None else u
    # the first index whose cdf exceeds u * total: a zero-probability token never is (its cdf equals the one before)
    idx = torch.searchsorted(cdf, (u.to(cdf) * cdf[:, -1])[:, None], right=True).clamp_(max=cdf.shape[1] - 1)
    return (idx if order is None else order.gather(-1, idx)).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids, pixel_values=None, attention_mask=None, max_new_tokens: int = 32,
             temperature: float = 0.0, top_p: float = 1.0, eos_token_id=None, pad_token_id=None,
             generator=None, min_new_tokens: int = 0, samples: int = 1, vocab_size: int | None = None):
    """Return the new tokens only, (B * samples, N) with N <= max_new_tokens, the `samples` rows of prompt b at
    b*samples ...; after a row's EOS the rest is padding. Each prompt (and its image) is run once; its samples
    share its cache (KVCache). generator: None, one torch.Generator, or a list of B * samples of them (one per
    row; see the module docstring). vocab_size: the tokenizer's; the head's rows past it are never generated
    (llava-hf pads its 32,002 tokens to 32,064 rows: untrained rows a sampler would otherwise pick now and then)."""
    cfg = model.config
    eos = cfg.text.eos_token_id if eos_token_id is None else eos_token_id
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else eos)
    B, T = input_ids.shape
    R = B * samples
    if max_new_tokens <= 0:
        return input_ids.new_empty(R, 0)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    lm = model.language_model
    x = model.embed(input_ids, pixel_values)  # (B, T, D)
    u = uniforms(R, max_new_tokens, generator, x.device) if temperature > 0 else None  # (R, N)
    c = cfg.text
    cache = KVCache(c.num_hidden_layers, attention_mask, samples, max_new_tokens, c.num_key_value_heads,
                    c.head_dim, x.dtype)
    pos = model.position_ids(attention_mask)  # (B, T)
    h = lm(x, attention_mask, pos, cache)[:, -1].repeat_interleave(samples, 0)  # (R, D): a prompt's last state
    next_pos = (pos[:, -1:] + 1).repeat_interleave(samples, 0)  # (R, 1)
    done = torch.zeros(R, dtype=torch.bool, device=x.device)
    out = []
    for step in range(max_new_tokens):
        logits = model.lm_head(h)  # (R, V)
        if vocab_size is not None and vocab_size < logits.shape[-1]:
            logits[:, vocab_size:] = float("-inf")
        if step < min_new_tokens:
            logits[:, eos] = float("-inf")
        tok = sample_next(logits, temperature, top_p, None if u is None else u[:, step])
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        out.append(tok)
        done |= tok == eos
        if bool(done.all()) or step == max_new_tokens - 1:  # one host sync per token: the early stop
            break
        h = lm(lm.embed_tokens(tok[:, None]), None, next_pos, cache)[:, -1]  # (R, D)
        next_pos = next_pos + 1
    return torch.stack(out, dim=1)  # (R, N)
