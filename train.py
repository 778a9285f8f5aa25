"""SFT and DPO (POVID two-stage, CLIP-DPO) for LLaVA in plain PyTorch, on one CPU or many GPUs (torchrun).

    python train.py --mode=sft --data=world/train.json --model_config=world/llava_config --tokenizer=world \
        --out_dir=out/sft --train_vision=True                         # a tiny LLaVA from scratch (full fine-tuning)
    python train.py --mode=dpo --data=pairs.jsonl --init_from=out/sft/model --out_dir=out/stage1 --lora_rank=16
    python train.py --mode=povid --data=pairs.jsonl --init_from=out/stage1/model --out_dir=out/povid --lora_rank=16
    python train.py --mode=povid --povid_stage1_steps=500 ...        # both POVID stages in one command
    python train.py --mode=clip-dpo --data=clip_pairs.jsonl --init_from=out/sft/model --out_dir=out/clip_dpo
    torchrun --standalone --nproc_per_node=8 train.py --mode=dpo ... --lora_rank=128 [--fsdp=True]
    python train.py my_config.json --lr=5e-6                         # a JSON config file, then overrides

Modes
  sft       token cross-entropy on every answer of LLaVA conversation JSON (normalised by the global count of
            answer tokens, so any split into ranks and micro-batches gives the same gradient).
  dpo       DPO (Rafailov et al. 2023, eq. 7; dpo.py) on a static preference file, any mix of hallucinate.py
            strategies. Chosen and rejected share one forward. The reference is the same network with its LoRA
            adapters off (no second copy), or a frozen copy under full fine-tuning; --ref_cache=True computes its
            log-probs once and stores them on disk.
  povid     POVID (Zhou et al. 2024). Stage 1 is `dpo` on the injected hallucinations, then the adapters are merged
            (--povid_stage1_steps=N runs it here, into out_dir/stage1/; 0 = --init_from already is that merged
            model). Stage 2: w_inj * DPO(chosen, injected) + w_noise * DPO(chosen, noise-triggered), 0.5 / 0.5, with
            the merged stage-1 model as the reference. The noise-triggered answer is made online every step: the image
            is DDPM-noised at --noise_t on its [0, 1] pixels (fresh seeded noise per sample per step), the policy
            reads the chosen answer teacher-forced under the noisy image with no grad, and its greedy token at every
            answer position (hallucinate.noise_triggered_tokens) is the dispreferred answer, scored on the hidden
            states of the chosen sequence's clean forward. The reference scores the same tokens
            (--noise_tokens_from=each: it picks its own, as POVID's released code does).
  clip-dpo  an alias of dpo with its defaults: CLIP-DPO (Ouali et al. 2024) is DPO on hallucinate.py clip-rank pairs.
  --rpo_alpha=A (dpo, povid, clip-dpo) adds A x the chosen answer's per-token NLL to every pair's loss (RPO; dpo.py).

Outputs in out_dir: config.json (the resolved config), metrics.jsonl (one JSON object per logged step), ckpt/
(trainable weights, optimizer, RNG states, step = data position; swapped in atomically; --resume=True continues,
bit-exactly on CPU), model/ (the final model, adapters merged, in the llava-hf layout + tokenizer.json); both are
written by train_state.py.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.distributed as dist
import torch.nn as nn

import train_data as D
from dpo import LOSS_TYPES, chosen_nll, dpo_loss, povid_loss, sequence_sums
from model import Llava, LlavaConfig, Tokenizer
from model.lora import DEFAULT_TARGETS, adapters_disabled, apply_lora
from train_state import export_model, load_checkpoint, save_checkpoint, write_atomic


# -------------------------------------------------------------------------------------------------------- config
@dataclass
class Config:
    mode: str = "sft"  # sft | dpo | povid | clip-dpo
    data: str = ""  # SFT conversation JSON, or preference JSONL / POVID JSON
    init_from: str = ""  # llava-hf checkpoint dir; empty = random init from model_config (SFT from scratch)
    model_config: str = ""  # dir with config.json, used when init_from is empty
    tokenizer: str = ""  # dir with tokenizer.json (default: init_from, else model_config)
    out_dir: str = "out/run"
    template: str = "llava_hf"  # llava_hf | vicuna_v1 (model/tokenizer.py)
    max_len: int = 512  # longer sequences lose the end of their response
    on_bad_sample: str = "error"  # error | skip (skips are counted by reason and reported)
    cache_images: bool = True  # keep preprocessed images in memory (off for COCO-sized data)
    # optimisation
    max_steps: int = 100
    batch_size: int = 16  # global, over all ranks: samples (sft) or pairs (dpo/povid) per optimizer step
    micro_batch_size: int = 16  # per rank per forward; accumulation = batch_size / (micro_batch_size * world)
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still logged)
    # what trains
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = ",".join(DEFAULT_TARGETS)  # decoder linear layers; lm_head is never wrapped
    train_projector: bool = False  # with LoRA: also train the projector (POVID most likely did not)
    train_vision: bool = False  # the CLIP tower; True for the toy world, which has no pretrained tower
    # DPO / POVID
    beta: float = 0.1
    loss_type: str = "sigmoid"  # sigmoid | hinge | ipo | robust (dpo.py)
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0  # dpo / povid / clip-dpo: + alpha x the chosen answer's per-token NLL (RPO; dpo.py)
    ref_cache: bool = False  # dpo: reference log-probs computed once, stored on disk
    ref_cache_dir: str = ""  # default: out_dir
    povid_stage1_steps: int = 0  # povid: run stage 1 (dpo + merge) first for this many steps
    povid_weight_injected: float = 0.5
    povid_weight_noise: float = 0.5
    noise_tokens_from: str = "policy"  # policy | each (the reference picks its own tokens, as POVID's code)
    noise_t: int = 500  # POVID's k
    noise_schedule: str = "sigmoid"
    noise_steps: int = 1000
    noise_beta_start: float = 1e-5
    noise_beta_end: float = 5e-3
    # system
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # frozen weights: auto = bfloat16 under LoRA on CUDA, else float32; trained ones are fp32
    grad_checkpointing: bool = False
    fsdp: bool = False  # FSDP2 fully_shard per decoder block (torchrun), for models that do not fit replicated
    log_every: int = 10
    save_every: int = 0  # 0 = only at the end
    export_every: int = 0  # also export the merged model every N steps into out_dir/exports/step_NNNNNN/ (0 = never)
    resume: bool = False
    stop_after: int = 0  # exit after this many steps as if killed, keeping the checkpoint (tests, time limits)
    peak_tflops: float = 0.0  # for MFU; 0 = look the GPU up


def _typed(key, val, t, src):
    """A command-line string or a JSON value -> the default's type, or a clear error."""
    bad = SystemExit(f"{src}: {key}={val!r}: expected {t.__name__}")
    if isinstance(val, str) and t is not str:
        if t is bool:
            if val not in ("True", "False", "true", "false", "1", "0"):
                raise bad
            return val in ("True", "true", "1")
        try:
            return t(val)
        except ValueError:
            raise bad from None
    if t is float and isinstance(val, int) and not isinstance(val, bool):
        return float(val)
    if type(val) is not t:
        raise bad
    return val


def parse_config(argv) -> Config:
    cfg = Config()
    types = {f.name: type(f.default) for f in fields(Config)}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, val = arg[2:].partition("=")
            if not eq:
                raise SystemExit(f"arguments are --key=value, got {arg!r}")
            pairs, src = [(key, val)], "command line"
        else:  # a JSON config file
            try:
                with open(arg) as f:
                    obj = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise SystemExit(f"config file {arg}: {e}") from None
            if not isinstance(obj, dict):
                raise SystemExit(f"config file {arg}: expected a JSON object")
            pairs, src = list(obj.items()), arg
        for key, val in pairs:
            if key not in types:
                raise SystemExit(f"{src}: unknown config key {key!r}")
            setattr(cfg, key, _typed(key, val, types[key], src))
    for key, allowed in (("mode", ("sft", "dpo", "povid", "clip-dpo")), ("on_bad_sample", ("error", "skip")),
                         ("loss_type", LOSS_TYPES), ("noise_tokens_from", ("policy", "each")),
                         ("dtype", ("auto", "float32", "bfloat16")), ("device", ("auto", "cpu", "cuda"))):
        if getattr(cfg, key) not in allowed:
            raise SystemExit(f"--{key} must be one of {', '.join(allowed)}; got {getattr(cfg, key)!r}")
    if not cfg.data:
        raise SystemExit("--data is required")
    if not cfg.init_from and not cfg.model_config:
        raise SystemExit("give --init_from (a checkpoint dir) or --model_config (a config dir, random init)")
    if min(cfg.batch_size, cfg.micro_batch_size, cfg.max_steps) < 1:
        raise SystemExit("batch_size, micro_batch_size and max_steps must be >= 1")
    if cfg.ref_cache and cfg.mode == "povid":
        raise SystemExit("--ref_cache needs static pairs; povid's noise-triggered answers are made online")
    if cfg.rpo_alpha < 0:
        raise SystemExit(f"--rpo_alpha must be >= 0, got {cfg.rpo_alpha}")
    if not 0 <= cfg.noise_t < cfg.noise_steps:
        raise SystemExit(f"--noise_t must be in [0, noise_steps={cfg.noise_steps})")
    return cfg


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr. A pure function of the step: it is the scheduler,
    and the step in the checkpoint is its whole state."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# -------------------------------------------------------------------------------------------------------- model
def build_model(cfg: Config, device, dtype) -> Llava:
    """The base network: a checkpoint, or a seeded random init from a config dir (the toy world's SFT)."""
    if cfg.init_from:
        return Llava.from_pretrained(cfg.init_from, dtype=dtype, device=device)
    torch.manual_seed(cfg.seed)  # every rank draws the same weights: FSDP does not broadcast them
    with torch.device(device):
        model = Llava(LlavaConfig.from_dir(cfg.model_config))
    return model.to(dtype)


class Net(nn.Module):
    """Every pass of the loop goes through forward(), so DDP and FSDP see (and gather parameters for) each use: the
    policy with grad, the reference, POVID's noisy pass. The LM head is applied by the fused log-prob kernel on the
    scored rows only, so (B, T, V) logits are never built."""

    def __init__(self, llava: Llava):
        super().__init__()
        self.llava = llava

    def forward(self, input_ids, pixel_values, attention_mask, labels, noise_targets=None, pick_noise=False):
        if pick_noise:  # POVID: greedy tokens under the noisy image, teacher-forced on `labels`: (B, T)
            from hallucinate import noise_triggered_tokens
            return noise_triggered_tokens(self.llava, input_ids, labels, pixel_values, attention_mask)
        h = self.llava.hidden_states(input_ids, pixel_values, attention_mask)  # (B, T, D)
        w = self.llava.lm_head.weight  # (V, D)
        lp = sequence_sums(h, w, labels)  # (B,) summed log-probs of the labelled tokens
        if noise_targets is None:
            return lp
        # the noise-triggered tokens on the first rows' (the chosen answers') clean hidden states: (B_pairs,)
        return lp, sequence_sums(h[: noise_targets.shape[0]], w, noise_targets)


def pair_logps(net, b, noise_targets=None):
    """One forward of [chosen; injected-rejected] (2B, T) -> pi_c, pi_r (B,), and pi_noise (B,) or None."""
    B = len(b["ids"])
    out = net(b["input_ids"], b["pixel_values"], b["attention_mask"], b["labels"], noise_targets)
    lp, noise = out if noise_targets is not None else (out, None)
    return lp[:B], lp[B:], noise


def model_flops(mc: LlavaConfig, n_layer_params: int, n_trained_layer_params: int, tokens: int, seq_len: int,
                images: int, scored: int, backward: bool) -> float:
    """Model FLOPs of one pass (nanoGPT/PaLM convention: 2 per multiply-add, attention as T x T, no recompute).
    Forward: 2 N per token through the decoder blocks + 4 L D T attention + the head on scored rows + the vision
    tower on each image. Backward (policy only): the input gradients (= forward) + weight gradients of the trained
    decoder parameters; the frozen CLIP tower gets no backward."""
    t, v = mc.text, mc.vision
    lm = 2 * n_layer_params * tokens + 4 * t.num_hidden_layers * t.hidden_size * seq_len * tokens
    head = 2 * t.hidden_size * t.vocab_size * scored
    p = (v.image_size // v.patch_size) ** 2 + 1  # patches + CLS
    vis_params = (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size) * mc.vision_layers_used
    vis = images * (2 * vis_params * p + 4 * mc.vision_layers_used * v.hidden_size * p * p)
    fwd = lm + head + vis
    return fwd + (lm + head + 2 * n_trained_layer_params * tokens if backward else 0)


def peak_flops(cfg: Config, device: str):
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, tf in (("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("A100", 312), ("L40S", 362)):  # dense bf16
        if key in name:
            return tf * 1e12
    return None


# -------------------------------------------------------------------------------------------------------- reference cache
def reference_cache(cfg, rows, net, ref_net, model, collate, images, tok, device, autocast, rank, world, print0):
    """Reference log-probs of every pair, (N, 2) = (chosen, rejected), computed once (the reference never changes
    within a stage) and stored under a key of the data file's hash, the reference checkpoint and everything else
    that changes the numbers. Ranks split the pairs and gather the result."""
    key = hashlib.sha256()
    with open(cfg.data, "rb") as f:
        key.update(f.read())
    for k in ("init_from", "model_config", "template", "max_len", "on_bad_sample"):
        key.update(f"{k}={getattr(cfg, k)};".encode())
    dtype = next(model.parameters()).dtype  # bf16 and fp32 references give different numbers
    key.update(f"seed={'' if cfg.init_from else cfg.seed};{device.split(':')[0]};{dtype}".encode())
    src = cfg.init_from or cfg.model_config
    for name in sorted(os.listdir(src)):  # the checkpoint's identity without reading 14 GB: sizes, heads, tails
        p = os.path.join(src, name)
        if name.endswith((".json", ".safetensors", ".bin")) and os.path.isfile(p):
            key.update(f"{name}:{os.path.getsize(p)}".encode())
            with open(p, "rb") as f:
                key.update(f.read(1 << 20))
                f.seek(max(0, os.path.getsize(p) - (1 << 20)))
                key.update(f.read())
    path = os.path.join(cfg.ref_cache_dir or cfg.out_dir, f"refcache-{key.hexdigest()[:16]}.pt")
    if os.path.isfile(path):
        logps = torch.load(path, weights_only=True)
        if logps.shape == (len(rows), 2):
            print0(f"reference log-probs of {len(rows)} pairs from {path}")
            return logps
    # every rank runs the same number of forwards (FSDP's collectives need that): the last rank may repeat a row
    mine = [min(i, len(rows) - 1) for i in range(rank, world * math.ceil(len(rows) / world), world)]
    out = {}
    for k in range(0, len(mine), cfg.micro_batch_size):
        idx = mine[k:k + cfg.micro_batch_size]
        b = _to(collate([rows[i] for i in idx], tok.pad_id, images), device)
        with torch.no_grad(), autocast, adapters_disabled(model) if ref_net is None else nullcontext():
            rc, rr, _ = pair_logps(net if ref_net is None else ref_net, b)
        out.update({i: (c, r) for i, c, r in zip(idx, rc.tolist(), rr.tolist())})
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, out)
        out = {i: v for part in parts for i, v in part.items()}
    logps = torch.tensor([out[i] for i in range(len(rows))], dtype=torch.float32)  # (N, 2)
    if rank == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(logps, path + ".tmp")
        os.replace(path + ".tmp", path)
        print0(f"reference log-probs of {len(rows)} pairs cached in {path}")
    return logps


def _to(b, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}


# -------------------------------------------------------------------------------------------------------- training
def train(cfg: Config, rank: int, world: int, local: int):
    master = rank == 0
    ddp = world > 1 or dist.is_initialized()

    def print0(*a):
        if master:
            print(*a, flush=True)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda":
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    per_rank = cfg.batch_size // world
    assert cfg.batch_size % world == 0 and per_rank % cfg.micro_batch_size == 0, \
        f"batch_size {cfg.batch_size} must split into {world} rank(s) x micro_batch_size {cfg.micro_batch_size} x " \
        "a whole number of accumulation steps"
    accum = per_rank // cfg.micro_batch_size
    objective = "dpo" if cfg.mode == "clip-dpo" else cfg.mode
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    frozen_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        cfg.dtype, torch.bfloat16 if cuda and cfg.lora_rank > 0 else torch.float32)
    os.makedirs(cfg.out_dir, exist_ok=True)

    # ---------------------------------------------------------------------------------------------- model
    model = build_model(cfg, device, frozen_dtype)
    mc = model.config
    tok = Tokenizer.from_pretrained(cfg.tokenizer or cfg.init_from or cfg.model_config)
    model.language_model.gradient_checkpointing = cfg.grad_checkpointing
    ref_model = None  # full fine-tuning DPO keeps a frozen copy, loaded afresh (never a copy of trained weights)
    if objective != "sft" and cfg.lora_rank == 0:
        ref_dtype = torch.bfloat16 if cuda and cfg.dtype != "float32" else frozen_dtype
        ref_model = build_model(cfg, device, ref_dtype).eval().requires_grad_(False)
    if cfg.lora_rank > 0:
        model.requires_grad_(False)
        torch.manual_seed(cfg.seed + 1)  # adapter init (and dropout masks) the same on every rank and every run
        apply_lora(model.language_model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                   targets=tuple(cfg.lora_targets.split(",")))
        model.projector.requires_grad_(cfg.train_projector)
    model.vision_tower.requires_grad_(cfg.train_vision)
    unused = list(model.vision_tower.layers[mc.vision_layers_used:]) + [model.vision_tower.post_layernorm]
    for m in unused:  # blocks past LLaVA's feature layer never run: no gradient (DDP would wait for one)
        if m is not None:
            m.requires_grad_(False)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # trained weights are fp32 masters; autocast runs their matmuls in bf16
    model.train()
    n_layer = sum(p.numel() for p in model.language_model.layers.parameters())
    n_layer_trained = sum(p.numel() for p in model.language_model.layers.parameters() if p.requires_grad)
    by_part = Counter()
    for n, p in model.named_parameters():
        by_part[n.split(".")[0]] += p.numel() if p.requires_grad else 0
    print0(f"mode {cfg.mode}: {sum(by_part.values()):,} trainable of {sum(p.numel() for p in model.parameters()):,} "
           f"parameters ({', '.join(f'{k} {v:,}' for k, v in by_part.items() if v)}); "
           f"{'LoRA r%d' % cfg.lora_rank if cfg.lora_rank else 'full fine-tuning'}; world {world}, micro "
           f"{cfg.micro_batch_size} x accum {accum}, device {device}, frozen weights {str(frozen_dtype)[6:]}")
    net, ref_net = Net(model), (Net(ref_model) if ref_model is not None else None)
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard
        for m in ([net] if ref_net is None else [net, ref_net]):
            for layer in m.llava.language_model.layers:
                fully_shard(layer)  # one all-gather per block: only one block is ever whole at a time
            fully_shard(m)
    elif ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(net, device_ids=[local] if cuda else None)

    # ---------------------------------------------------------------------------------------------- data
    skips = D.Skips(cfg.on_bad_sample)
    images = D.ImageStore(mc.image_size, pad=mc.image_aspect_ratio == "pad", cache=cfg.cache_images)
    load = D.load_sft if objective == "sft" else D.load_pairs
    rows = D.check_images(load(cfg.data, tok, mc.num_image_tokens, cfg.template, cfg.max_len, skips), images, skips)
    if len(rows) < cfg.batch_size:
        raise SystemExit(f"{cfg.data}: {len(rows)} usable samples, fewer than one batch ({cfg.batch_size})\n"
                         f"{skips.report()}")
    if objective == "povid" and any(r["image"] is None for r in rows):
        raise SystemExit(f"{cfg.data}: povid needs an image in every pair (its noise-triggered answers noise it)")
    kinds = Counter(r.get("strategy") or "-" for r in rows) if objective != "sft" else {}
    print0(f"data: {len(rows)} samples from {cfg.data} {dict(kinds) if kinds else ''}\n{skips.report()}")
    collate = D.collate_sft if objective == "sft" else D.collate_pairs
    schedule = None
    if objective == "povid":
        from noise import NoiseSchedule
        schedule = NoiseSchedule(cfg.noise_schedule, cfg.noise_steps, cfg.noise_beta_start, cfg.noise_beta_end)

    def global_batch(step):
        """Row indices of the global batch of `step`: each epoch is a seeded permutation, so the data position is
        the step alone, and every rank computes the same batch and takes its own disjoint slice."""
        out, pos = [], step * cfg.batch_size
        while len(out) < cfg.batch_size:
            epoch, off = divmod(pos, len(rows))
            perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
            take = min(cfg.batch_size - len(out), len(rows) - off)
            out += perm[off:off + take].tolist()
            pos += take
        return out

    ref_logps = None
    if cfg.ref_cache and objective == "dpo":
        ref_logps = reference_cache(cfg, rows, net, ref_net, model, collate, images, tok, device, autocast, rank,
                                    world, print0)
        ref_net = ref_model = None  # the copy (full fine-tuning) is no longer needed

    # ---------------------------------------------------------------------------------------------- optimizer, resume
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.adam_beta1, cfg.adam_beta2))
    start = load_checkpoint(cfg, net, model, opt, rank) if cfg.resume else 0
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if master:
        write_atomic(os.path.join(cfg.out_dir, "config.json"), json.dumps(asdict(cfg), indent=2))
        kept = []
        if start and os.path.isfile(metrics_path):  # drop what the killed run logged after its last checkpoint
            with open(metrics_path) as f:
                kept = [x for x in f if x.strip() and json.loads(x)["step"] <= start]
        write_atomic(metrics_path, "".join(kept))
        print0(f"resumed from {cfg.out_dir}/ckpt at step {start}" if start else f"writing to {cfg.out_dir}")
    peak = peak_flops(cfg, device)
    rnet = net if ref_net is None else ref_net  # the reference: the policy with adapters off, or the frozen copy

    def ref_ctx():
        return adapters_disabled(model) if ref_net is None else nullcontext()

    # ---------------------------------------------------------------------------------------------- loop
    t_run, t_log, done = time.time(), time.time(), start
    acc_tokens = acc_flops = 0.0
    for step in range(start, cfg.max_steps):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        mine = global_batch(step)[rank * per_rank:(rank + 1) * per_rank]  # this rank's disjoint shard
        micro = [mine[k:k + cfg.micro_batch_size] for k in range(0, per_rank, cfg.micro_batch_size)]
        batches = [collate([rows[i] for i in m], tok.pad_id, images) for m in micro]  # on the CPU
        if objective == "sft":  # normalise by the global answer-token count: ranks and accumulation agree exactly
            n_scored = torch.tensor(float(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)), device=device)
            if ddp:
                dist.all_reduce(n_scored)
            denom = n_scored / world  # DDP averages gradients over ranks
        stats = torch.zeros(5, dtype=torch.float64, device=device)  # loss, chosen, rejected, accuracy, non-finite
        tokens = flops = 0.0
        finite_flags = []
        # ------------------------------------------------------------------------------------ BEGIN training step
        for k, b in enumerate(batches):
            if ddp and not cfg.fsdp:
                net.require_backward_grad_sync = k == len(batches) - 1  # all-reduce gradients on the last only
            T, n_tok = b["input_ids"].shape[1], float(b["attention_mask"].sum())  # counted before the copy: no sync
            n_img = 0 if b["pixel_values"] is None else len(b["pixel_values"])
            scored = int((b["labels"] != -100).sum())
            tokens += n_tok
            flops += model_flops(mc, n_layer, n_layer_trained, n_tok, T, n_img, scored, backward=True)
            b = _to(b, device)
            with autocast:
                if objective == "sft":
                    loss = -net(b["input_ids"], b["pixel_values"], b["attention_mask"], b["labels"]).sum() / denom
                    cr = rj = torch.zeros(1, device=device)
                else:
                    noise_pol = noise_ref = None
                    if objective == "povid":  # the noise-triggered answer, made now by the current policy
                        P = len(b["ids"])
                        noisy = torch.stack([images.noisy(path, cfg.noise_t, schedule, torch.Generator().manual_seed(
                            cfg.seed * 1_000_003 + step * 10_007 + rank * per_rank + k * cfg.micro_batch_size + j))
                            for j, path in enumerate(b["images"]) if path is not None]).to(device)  # (P_img, 3, S, S)
                        chosen = (b["input_ids"][:P], noisy, b["attention_mask"][:P], b["labels"][:P])
                        with torch.no_grad():
                            noise_pol = noise_ref = net(*chosen, pick_noise=True)  # (P, T) targets, -100 = unscored
                            if cfg.noise_tokens_from == "each":
                                with ref_ctx():
                                    noise_ref = rnet(*chosen, pick_noise=True)
                        flops += model_flops(mc, n_layer, 0, n_tok / 2, T, n_img / 2, scored / 2, False) * (
                            2 if cfg.noise_tokens_from == "each" else 1)
                    pc, pr, pn = pair_logps(net, b, noise_pol)  # (P,) each, with grad
                    if ref_logps is not None:
                        ref = ref_logps[torch.tensor(micro[k])].to(device)  # (P, 2)
                        rc, rr, rn = ref[:, 0], ref[:, 1], None
                    else:
                        with torch.no_grad(), ref_ctx():
                            rc, rr, rn = pair_logps(rnet, b, noise_ref)
                        flops += model_flops(mc, n_layer, 0, n_tok, T, n_img, scored, backward=False)
                    if objective == "povid":
                        losses, cr, rj = povid_loss(pc, pr, pn, rc, rr, rn, cfg.beta,
                                                    (cfg.povid_weight_injected, cfg.povid_weight_noise))
                    else:
                        losses, cr, rj = dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.loss_type, cfg.label_smoothing)
                    if cfg.rpo_alpha:
                        n_c = (b["labels"][:len(b["ids"]), 1:] != -100).sum(1)  # (P,) the chosen answers' tokens
                        losses = losses + cfg.rpo_alpha * chosen_nll(pc, n_c)
                    loss = losses.sum() / per_rank  # summed over micro-batches: the mean over this rank's share
            loss.backward()
            finite = torch.isfinite(loss.detach())
            finite_flags.append(finite)
            stats += torch.stack([loss.detach(), cr.sum() / per_rank, rj.sum() / per_rank,
                                  (cr > rj).sum() / per_rank, (~finite).float()]).double()
        stats = torch.cat([stats[:4] / world, stats[4:], torch.tensor([tokens, flops], device=device).double()])
        if ddp:
            dist.all_reduce(stats)  # one collective for every logged number
        if stats[4] > 0:  # a NaN/inf loss: stop before the optimizer touches the weights
            ids = [i for finite, b in zip(finite_flags, batches) if not finite for i in b["ids"]]
            if ddp:
                parts = [None] * world
                dist.all_gather_object(parts, ids)
                ids = [i for p in parts for i in p]
            raise SystemExit(f"non-finite loss at step {step} (batch ids {ids}); stopped, the last good checkpoint "
                             f"in {cfg.out_dir}/ckpt is kept")
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if not math.isfinite(norm):
            raise SystemExit(f"non-finite gradient norm at step {step}; stopped, the last good checkpoint in "
                             f"{cfg.out_dir}/ckpt is kept")
        opt.step()
        opt.zero_grad(set_to_none=True)
        # ------------------------------------------------------------------------------------ END training step
        done = step + 1
        s = stats.tolist()
        acc_tokens, acc_flops = acc_tokens + s[5], acc_flops + s[6]
        if master and (step % cfg.log_every == 0 or done == cfg.max_steps):
            now = time.time()
            rec = {"step": done, "loss": s[0], "lr": lr, "grad_norm": norm,
                   "tokens/s": acc_tokens / max(now - t_log, 1e-9)}
            if objective != "sft":
                rec.update({"rewards/chosen": s[1], "rewards/rejected": s[2], "rewards/margin": s[1] - s[2],
                            "rewards/accuracy": s[3]})
            if peak:
                rec["mfu"] = acc_flops / max(now - t_log, 1e-9) / (peak * world)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            eta = (now - t_run) / (done - start) * (cfg.max_steps - done)
            extra = "" if objective == "sft" else f" margin {s[1] - s[2]:.3f} acc {s[3]:.2f}"
            mfu = f" mfu {100 * rec['mfu']:.1f}%" if peak else ""
            print0(f"step {done}/{cfg.max_steps} ({100 * done / cfg.max_steps:.0f}%) loss {s[0]:.4f}{extra} "
                   f"|g| {norm:.3f} lr {lr:.2e} {rec['tokens/s']:.0f} tok/s{mfu} ETA {eta:.0f}s")
            t_log, acc_tokens, acc_flops = now, 0.0, 0.0
        if cfg.export_every and done % cfg.export_every == 0 and done < cfg.max_steps:  # the last one is model/
            export_model(cfg, net, model, tok, rank, os.path.join(cfg.out_dir, "exports", f"step_{done:06d}"))
        if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.stop_after:
            save_checkpoint(cfg, net, model, opt, done, rank)
        if done == cfg.stop_after:
            print0(f"stopping after step {done} (--stop_after); --resume=True continues")
            return None

    # ---------------------------------------------------------------------------------------------- export
    if done > start or not os.path.isfile(os.path.join(cfg.out_dir, "ckpt", "state.json")):
        save_checkpoint(cfg, net, model, opt, done, rank)
    path = export_model(cfg, net, model, tok, rank)
    print0(f"done: step {done}/{cfg.max_steps} in {time.time() - t_run:.0f}s; model -> {path}\n{skips.report()}")
    return path


# -------------------------------------------------------------------------------------------------------- main
def main(argv):
    cfg = parse_config(argv)
    # torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a caller may have set the process group up already
    distributed = int(os.environ.get("RANK", -1)) != -1
    owns_group = distributed and not dist.is_initialized()
    if owns_group:
        use_nccl = torch.cuda.is_available() and cfg.device != "cpu"
        dist.init_process_group("nccl" if use_nccl else "gloo")
    if cfg.fsdp and not distributed:
        raise SystemExit("--fsdp=True needs torchrun (e.g. torchrun --standalone --nproc_per_node=8 train.py ...)")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    local = int(os.environ.get("LOCAL_RANK", 0))
    try:
        if cfg.mode == "povid" and cfg.povid_stage1_steps > 0:
            # stage 1: DPO on the injected hallucinations, merged on export; it is both the start and the reference
            # of stage 2. A finished stage 1 (its model/ exists) is reused.
            s1 = replace(cfg, mode="dpo", max_steps=cfg.povid_stage1_steps, povid_stage1_steps=0,
                         out_dir=os.path.join(cfg.out_dir, "stage1"), stop_after=0)
            merged = os.path.join(s1.out_dir, "model")
            if not os.path.isfile(os.path.join(merged, "config.json")):
                train(s1, rank, world, local)
            cfg = replace(cfg, init_from=merged, povid_stage1_steps=0)
        return train(cfg, rank, world, local)
    finally:
        if owns_group:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
