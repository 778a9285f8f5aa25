"""The LLaMA decoder (Touvron et al. 2023) that LLaVA-1.5 uses as its language model (Vicuna v1.5), from scratch.

  RMSNorm:  y = w * cast(x / sqrt(mean(x^2) + eps))        normalised in fp32, cast back, *then* the weight (HF order)
  RoPE:     q' = q cos + rotate_half(q) sin                 rotate-half form, the one HF-format weights are permuted
                                                           for; cos/sin built in fp32 from rope_theta, then cast
  attention: grouped-query (num_key_value_heads <= heads), causal, through F.scaled_dot_product_attention
  MLP:      down(silu(gate(x)) * up(x))                     SwiGLU, no biases
  block:    h = x + attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h))

Batched inputs are left-padded: `attention_mask` (B, T) with 0 on padding. Position ids count real tokens only
(cumsum of the mask), so a left-padded row computes exactly what the same row alone would. `KVCache` holds
preallocated keys/values for generation.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import TextConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(position_ids, head_dim: int, theta: float, dtype):
    """(B, T) positions -> cos, sin of shape (B, 1, T, hd), computed in fp32 (autocast off), then cast."""
    with torch.autocast(device_type=position_ids.device.type, enabled=False):
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
        freqs = position_ids.float()[..., None] * inv_freq  # (B, T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class KVCache:
    """Preallocated per-layer keys and values, (B, H_kv, max_len, hd); `length` = positions filled so far."""

    def __init__(self, n_layers, batch, kv_heads, max_len, head_dim, dtype, device):
        shape = (batch, kv_heads, max_len, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.length = 0

    def update(self, layer: int, k, v):
        start, end = self.length, self.length + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.h, self.kv, self.hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.h * self.hd, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.kv * self.hd, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.h * self.hd, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache=None, layer_idx=0):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)  # (B, Hkv, S, hd), S = cached + T
        # mask None = no padding anywhere: plain causal (or, for one new token, everything cached), which lets
        # SDPA pick its flash kernel on GPU; a boolean mask would force a slower one
        causal = mask is None and T > 1
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.kv != self.h)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.h * self.hd))


class MLP(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask, cache=None, layer_idx=0):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer_idx)
        return h + self.mlp(self.post_attention_layernorm(h))


def attention_mask_4d(key_mask, q_len: int):
    """(B, S) key validity (1 = real) -> (B, 1, q_len, S) bool: causal over the last q_len positions, padding
    keys hidden. A padding query still sees itself, so no softmax row is empty (its output is never used)."""
    B, S = key_mask.shape
    q_pos = torch.arange(S - q_len, S, device=key_mask.device)[:, None]  # (q, 1) absolute positions
    k_pos = torch.arange(S, device=key_mask.device)[None, :]  # (1, S)
    allowed = (k_pos <= q_pos)[None] & key_mask.bool()[:, None, :]  # (B, q, S)
    allowed = allowed | (k_pos == q_pos)[None]
    return allowed[:, None]


class LlamaModel(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, x, key_mask, position_ids, cache: KVCache | None = None):
        """x: (B, T, D) input embeddings; key_mask: (B, S) validity of every key position (S = cached + T);
        position_ids: (B, T). Returns the final-normed hidden states (B, T, D)."""
        T = x.shape[1]
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        if bool(key_mask.all()):
            # is_causal aligns the causal triangle top-left, right only when the queries start at key 0
            assert T == 1 or cache is None or cache.length == 0, "multi-token step on a filled cache needs a mask"
            mask = None
        else:
            mask = attention_mask_4d(key_mask, T)
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.length += T
        return self.norm(x)
