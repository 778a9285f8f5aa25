"""The LLaMA decoder (Touvron et al. 2023) that LLaVA-1.5 uses as its language model (Vicuna v1.5), from scratch.

  RMSNorm:  y = w * cast(x / sqrt(mean(x^2) + eps))        normalised in fp32, cast back, *then* the weight (HF order)
  RoPE:     q' = q cos + rotate_half(q) sin                 rotate-half form, the one HF-format weights are permuted
                                                           for; cos/sin built in fp32 from rope_theta, then cast
  attention: grouped-query (num_key_value_heads <= heads), causal, through F.scaled_dot_product_attention
  MLP:      down(silu(gate(x)) * up(x))                     SwiGLU, no biases
  block:    h = x + attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h))

Padding: `key_mask` (B, T) with 0 on padding, for left-padded batches (generation prompts); position ids count real
tokens only (cumsum of the mask), so a left-padded row computes what the same row alone would. `key_mask=None` means
no padding *before* any real token (unpadded or right-padded training batches): causal attention alone is then exact
at every real position, and SDPA may take its flash kernel. `KVCache` holds the keys and values for generation, the
prompt's shared by the samples drawn from it.
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


def attend(q, k, v, mask):
    """SDPA, grouped-query. mask None = causal (no padding before a real token), which lets SDPA pick its flash
    kernel on GPU; a boolean mask (B, 1, T, S) would force a slower one."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and q.shape[2] > 1,
                                          enable_gqa=k.shape[1] != q.shape[1])


class KVCache:
    """Keys and values for generation with K samples per prompt. The prefill keeps the B prompts' keys and values,
    (B, Hkv, T, hd), once; the K samples of a prompt share them, and each of the B*K rows gets its own room for N
    new tokens, (B*K, Hkv, N, hd): B*(T + K*N) positions in all, not B*K*(T + N) (CLIP-DPO's 6 samples per image on
    a 7B at 16 images of 650 prompt tokens, 256 new: 17 GiB, not 42). With one sample per prompt the new tokens
    follow the prompt in one buffer, (B, Hkv, T + N, hd), and a decode step is one SDPA call (its fused decode
    kernel). `length` = positions filled so far, prompt included."""

    def __init__(self, n_layers, prompt_mask, samples, max_new, kv_heads, head_dim, dtype):
        B, T = prompt_mask.shape
        dev = prompt_mask.device
        self.prompt_len, self.samples, self.max_new, self.length = T, samples, max_new, 0
        self.k, self.v = [None] * n_layers, [None] * n_layers  # the prompt's, set by the prefill
        if samples == 1:  # which keys a decode step may see: the prompt's real ones and every new one, (B, 1, 1, T+N)
            self.key_ok = torch.cat([prompt_mask.bool(), torch.ones(B, max_new, dtype=torch.bool, device=dev)],
                                    1)[:, None, None]
            return
        # additive bias on the prompt's keys: -inf on its (left) padding, (B, 1, 1, T)
        self.prompt_bias = torch.zeros(B, 1, 1, T, device=dev).masked_fill(~prompt_mask.bool()[:, None, None],
                                                                           float("-inf"))
        shape = (B * samples, kv_heads, max_new, head_dim)
        self.new_k = [torch.empty(shape, dtype=dtype, device=dev) for _ in range(n_layers)]
        self.new_v = [torch.empty(shape, dtype=dtype, device=dev) for _ in range(n_layers)]

    @staticmethod
    def nbytes(n_layers, kv_heads, head_dim, dtype, prompts, prompt_len, samples, max_new) -> int:
        """What a cache of this shape holds, for sizing batches to a memory budget."""
        per_position = 2 * n_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8  # keys and values
        return per_position * prompts * (prompt_len + samples * max_new)

    def attend(self, layer: int, q, k, v, mask):
        """The prefill (q (B, H, T, hd), every prompt position) stores k, v and attends like no cache; a decode step
        (q (B*K, H, 1, hd), one new token per row) attends to its prompt's keys and its own new ones."""
        if self.length == 0:
            if self.samples == 1:  # (B, Hkv, T + N, hd): room for the new tokens after the prompt
                self.k[layer], self.v[layer] = (torch.cat([x, x.new_empty(*x.shape[:2], self.max_new, x.shape[3])], 2)
                                                for x in (k, v))
            else:
                self.k[layer], self.v[layer] = k, v  # (B, Hkv, T, hd)
            return attend(q, k, v, mask)
        assert q.shape[2] == 1, "after the prefill, one token per row and step"
        if self.samples == 1:
            S = self.length + 1
            self.k[layer][:, :, S - 1:S], self.v[layer][:, :, S - 1:S] = k, v
            return F.scaled_dot_product_attention(q, self.k[layer][:, :, :S], self.v[layer][:, :, :S],
                                                  attn_mask=self.key_ok[..., :S], enable_gqa=k.shape[1] != q.shape[1])
        n = self.length - self.prompt_len  # new tokens before this one
        self.new_k[layer][:, :, n:n + 1], self.new_v[layer][:, :, n:n + 1] = k, v
        kn, vn = self.new_k[layer][:, :, :n + 1], self.new_v[layer][:, :, :n + 1]  # (R, Hkv, n+1, hd), R = B*K
        kp, vp = self.k[layer], self.v[layer]  # (B, Hkv, T, hd)
        B, Hkv, T, hd = kp.shape
        R, H = q.shape[:2]
        K, G = self.samples, H // Hkv
        # the K samples x G grouped heads of a prompt are K*G query rows against its one copy of the prompt
        qp = q.view(B, K, Hkv, G, hd).transpose(1, 2).reshape(B, Hkv, K * G, hd)
        s_p = (qp @ kp.transpose(-1, -2)).float() + self.prompt_bias  # (B, Hkv, K*G, T)
        s_n = (q.view(R, Hkv, G, hd) @ kn.transpose(-1, -2)).float()  # (R, Hkv, G, n+1)
        s_n = s_n.view(B, K, Hkv, G, n + 1).transpose(1, 2).reshape(B, Hkv, K * G, n + 1)
        p = torch.softmax(torch.cat([s_p, s_n], dim=-1) * hd ** -0.5, dim=-1).to(q.dtype)  # one softmax over both
        y = p[..., :T] @ vp  # (B, Hkv, K*G, hd)
        y = y.view(B, Hkv, K, G, hd).transpose(1, 2).reshape(R, Hkv, G, hd)
        p_n = p[..., T:].reshape(B, Hkv, K, G, n + 1).transpose(1, 2).reshape(R, Hkv, G, n + 1)
        y = y + p_n @ vn  # (R, Hkv, G, hd)
        return y.view(R, H, 1, hd)


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
        y = attend(q, k, v, mask) if cache is None else cache.attend(layer_idx, q, k, v, mask)  # (B, H, T, hd)
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


def attention_mask_4d(key_mask):
    """(B, T) validity (1 = real) -> (B, 1, T, T) bool: causal, padding keys hidden. A padding query still sees
    itself, so no softmax row is empty (its output is never used)."""
    T = key_mask.shape[1]
    pos = torch.arange(T, device=key_mask.device)
    causal = pos[None, :] <= pos[:, None]  # (T, T): key <= query
    allowed = causal[None] & key_mask.bool()[:, None, :]  # (B, T, T)
    return (allowed | torch.eye(T, dtype=torch.bool, device=key_mask.device))[:, None]


class LlamaModel(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, x, key_mask, position_ids, cache: KVCache | None = None):
        """x: (B, T, D) input embeddings; key_mask: (B, T) validity of each position, or None when no padding comes
        before a real token (then plain causal attention; the cache masks a generation prompt's padding itself);
        position_ids: (B, T). Returns the final-normed hidden states (B, T, D)."""
        T = x.shape[1]
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        mask = None if key_mask is None else attention_mask_4d(key_mask)  # (B, 1, T, T)
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.length += T
        return self.norm(x)
