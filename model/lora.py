"""LoRA (Hu et al. 2021, eq. 3), hand-written: h = W0 x + (alpha / r) B A x, W0 frozen, A (r, in) random, B (out, r)
zero, so training starts exactly at the base model.

Why it matters for DPO: the reference model is the same network with the adapters switched off
(`adapters_disabled`), so no second copy of the weights is held (POVID's trainer does the same through PEFT's
disable_adapter). A module trained beside the adapters (LLaVA's projector) is not switched off by it: train.py keeps
a frozen copy of its initial weights for the reference's passes. `merge_lora` (modules) and `merge_lora_state` (a
state dict, e.g. gathered from FSDP shards) fold B A into W0 and give back plain nn.Linear keys, so the merged model
saves in the llava-hf layout.

A and B are kept in fp32 whatever the base dtype (a bf16 base on GPU): they are the trained master weights; under
autocast their matmuls run in bf16 like the rest.

    names = apply_lora(model.language_model, rank=8, alpha=16, dropout=0.0)  # q k v o gate up down of every block
    with adapters_disabled(model): ref_logits = model(...)
    merge_lora(model)
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=torch.float32, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32, device=dev))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own init (and PEFT's)
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True

    def forward(self, x):  # x (..., in)
        y = self.base(x)  # (..., out)
        if not self.enabled:
            return y
        z = self.dropout(x)
        if z.dtype != self.lora_A.dtype and not torch.is_autocast_enabled(z.device.type):
            z = z.to(self.lora_A.dtype)  # a bf16 base without autocast (inference on an unmerged model)
        z = F.linear(F.linear(z, self.lora_A), self.lora_B)  # (..., r) -> (..., out): never forms B A
        return y + (z * self.scale).to(y.dtype)

    def delta_weight(self):
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale  # (out, in) fp32


def apply_lora(module: nn.Module, rank: int, alpha: float, dropout: float = 0.0, targets=DEFAULT_TARGETS):
    """Wrap every nn.Linear whose attribute name is one of `targets` (lm_head is not a decoder-layer name, so it
    stays plain); freeze the wrapped weights. Returns the wrapped module names."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    names = []
    for name, parent in list(module.named_modules()):
        for cname, sub in list(parent.named_children()):
            if isinstance(sub, nn.Linear) and cname in targets:
                sub.requires_grad_(False)
                setattr(parent, cname, LoRALinear(sub, rank, alpha, dropout))
                names.append(f"{name}.{cname}" if name else cname)
    if not names:
        raise ValueError(f"no linear layer named one of {tuple(targets)} to wrap")
    return names


def lora_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@contextmanager
def adapters_disabled(model: nn.Module):
    """The base model: every adapter off inside the block (the DPO reference), restored after."""
    mods = lora_modules(model)
    states = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m, s in zip(mods, states):
            m.enabled = s


@torch.no_grad()
def merge_lora(model: nn.Module):
    """Fold every adapter into its base weight and put the plain nn.Linear back. Returns the merged count."""
    n = 0
    for parent in list(model.modules()):
        for cname, sub in list(parent.named_children()):
            if isinstance(sub, LoRALinear):
                w = sub.base.weight
                w.copy_((w.float() + sub.delta_weight()).to(w.dtype))
                setattr(parent, cname, sub.base)
                n += 1
    return n


@torch.no_grad()
def merge_lora_state(state: dict, scale: float) -> dict:
    """The same fold on a state dict: "x.base.weight" + scale * "x.lora_B" @ "x.lora_A" -> "x.weight".
    Other tensors pass through untouched (no copy)."""
    out = {}
    for k, v in state.items():
        if k.endswith(".lora_A") or k.endswith(".lora_B"):
            continue
        if k.endswith(".base.weight"):
            p = k[: -len(".base.weight")]
            if p + ".lora_A" not in state or p + ".lora_B" not in state:
                raise KeyError(f"{k}: adapter weights {p}.lora_A / {p}.lora_B missing from the state dict")
            delta = (state[p + ".lora_B"].float() @ state[p + ".lora_A"].float()) * scale  # (out, in)
            out[p + ".weight"] = (v.float() + delta.to(v.device)).to(v.dtype)
        elif k.endswith(".base.bias"):
            out[k[: -len(".base.bias")] + ".bias"] = v
        else:
            out[k] = v
    return out
