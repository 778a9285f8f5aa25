"""The network train.py trains (a helper of train.py): loaded from a checkpoint or drawn from a config, what trains
(LoRA adapters, the projector, the tower; trained weights kept as fp32 masters), what the DPO reference needs beside
it, and the optimizer.

    model = build_model(cfg, "cuda:0", torch.bfloat16)
    summary = make_trainable(cfg, model)                  # "4,096 trainable of 75,040 parameters (...); LoRA r4"
    ref_model, frozen = reference_copies(cfg, "dpo", model)
    opt = make_optimizer(cfg, model)
"""
from __future__ import annotations

import copy
from collections import Counter

import torch

from model import Llava, LlavaConfig
from model.lora import apply_lora
from train_config import Config


def build_model(cfg: Config, device, dtype) -> Llava:
    """The base network: a checkpoint, or a seeded random init from a config dir (the toy world's SFT)."""
    if cfg.init_from:
        try:
            return Llava.from_pretrained(cfg.init_from, dtype=dtype, device=device,
                                         vision_tower=cfg.vision_tower or None)
        except (FileNotFoundError, ValueError) as e:  # a bad checkpoint dir: one line that names file and field
            raise SystemExit(f"train.py: --init_from={cfg.init_from}: {e}") from None
    torch.manual_seed(cfg.seed)  # every rank draws the same weights: FSDP does not broadcast them
    with torch.device(device):
        model = Llava(LlavaConfig.from_dir(cfg.model_config))
    return model.to(dtype)


def make_trainable(cfg: Config, model: Llava):
    """Freeze what does not train, wrap LoRA adapters, keep trained weights as fp32 masters. Returns a one-line
    summary of what trains."""
    if cfg.lora_rank > 0:
        model.requires_grad_(False)
        torch.manual_seed(cfg.seed + 1)  # adapter init (and dropout masks) the same on every rank and every run
        apply_lora(model.language_model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                   targets=tuple(cfg.lora_targets.split(",")))
        model.projector.requires_grad_(cfg.train_projector)
    model.vision_tower.requires_grad_(cfg.train_vision)
    unused = list(model.vision_tower.layers[model.config.vision_layers_used:]) + [model.vision_tower.post_layernorm]
    for m in unused:  # blocks past LLaVA's feature layer never run: no gradient (DDP would wait for one)
        if m is not None:
            m.requires_grad_(False)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # trained weights are fp32 masters; autocast runs their matmuls in bf16
    model.train()
    by_part = Counter()
    for n, p in model.named_parameters():
        by_part[n.split(".")[0]] += p.numel() if p.requires_grad else 0
    return (f"{sum(by_part.values()):,} trainable of {sum(p.numel() for p in model.parameters()):,} parameters "
            f"({', '.join(f'{k} {v:,}' for k, v in by_part.items() if v)}); "
            f"{'LoRA r%d' % cfg.lora_rank if cfg.lora_rank else 'full fine-tuning'}")


def reference_copies(cfg: Config, objective: str, model: Llava):
    """What the reference needs beside the policy, copied right after make_trainable, before any step: so the
    reference is the initial model in every mode, with the policy's dtypes (pi = ref bit for bit at step 0).
    Full fine-tuning: a frozen copy of the whole model (4 bytes a parameter: the policy's fp32 masters; sharded
    under FSDP). LoRA: the adapters switched off give the decoder's base weights, and each other module that trains
    (--train_projector, --train_vision) gets a frozen copy that the reference's passes swap in (Run.reference; the
    projector of a 7B: 21M parameters). -> (the whole copy or None, {child name: frozen copy})."""
    if objective == "sft":
        return None, {}
    if cfg.lora_rank == 0:
        return copy.deepcopy(model).requires_grad_(False), {}
    return None, {name: copy.deepcopy(m).requires_grad_(False) for name, m in model.named_children()
                  if any(p.requires_grad and ".lora_" not in n for n, p in m.named_parameters())}


def make_optimizer(cfg: Config, model: Llava):
    """AdamW over the trained weights; the projector in its own group when it has its own lr. Each group keeps its
    base lr as "base_lr"; the schedule scales it."""
    proj = [p for p in model.projector.parameters() if p.requires_grad] if cfg.projector_lr else []
    ids = {id(p) for p in proj}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "base_lr": cfg.lr}] + ([{"params": proj, "base_lr": cfg.projector_lr}] if proj else [])
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps,
                             betas=(cfg.adam_beta1, cfg.adam_beta2))
