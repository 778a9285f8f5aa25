"""LoRA (Hu et al. 2021, eq. 3): h = W0 x + (alpha / r) B A x, with W0 frozen, A (r, in) random, B (out, r) zero,
so training starts exactly at the base model.

Why it matters for DPO here: the reference model is the same network with the adapters switched off
(`adapters_disabled`), so no second copy of the weights is held (POVID's official trainer does the same through
PEFT's disable_adapter). `merge_lora` folds B A into W0 and restores plain nn.Linear modules, so the merged
model saves in the llava-hf layout and loads in transformers.

    names = apply_lora(model.language_model, rank=8, alpha=16, dropout=0.0)
    with adapters_disabled(model): ref_logits = model(...)
    merge_lora(model)
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own init
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True

    def forward(self, x):
        y = self.base(x)
        if self.enabled:
            y = y + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale
        return y

    def merged_weight(self):
        return self.base.weight + (self.lora_B @ self.lora_A) * self.scale  # (out, in)


def apply_lora(module: nn.Module, rank: int, alpha: float, dropout: float = 0.0, targets=DEFAULT_TARGETS):
    """Wrap every nn.Linear whose name ends in one of `targets`; freeze the wrapped weights. Returns the names."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    names = []
    for name, child in list(module.named_modules()):
        for cname, sub in list(child.named_children()):
            if isinstance(sub, nn.Linear) and cname in targets:
                sub.weight.requires_grad_(False)
                setattr(child, cname, LoRALinear(sub, rank, alpha, dropout))
                names.append(f"{name}.{cname}" if name else cname)
    if not names:
        raise ValueError(f"no linear layer named one of {targets} to wrap")
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
                base = sub.base
                base.weight.copy_(sub.merged_weight())
                setattr(parent, cname, base)
                n += 1
    return n
