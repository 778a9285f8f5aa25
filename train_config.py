"""train.py's configuration: every flag with its default, how a recipe file and the command line set them (a
helper of train.py), and the two functions of the config alone: the run's length and the learning-rate schedule.

    cfg = parse_config(["recipes/povid_stage1.toml", "--init_from=ckpt/llava-1.5-7b-hf", "--data=pairs.json"])

Arguments are read left to right, later ones win: a TOML recipe (recipes/*.toml) or JSON config file sets its keys,
`--key=value` sets one; every value is checked against the default's type and the allowed choices, with an error
that names the file or the flag. resolve_length() turns epochs and warmup_ratio into steps once the data's size is
known; lr_factor() is linear warmup then cosine to min_lr_ratio (POVID: warmup 3%, cosine to 0).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace

from dpo import LOSS_TYPES
from model.lora import DEFAULT_TARGETS
from model.tokenizer import DEFAULT_TEMPLATE, TEMPLATES


@dataclass
class Config:
    mode: str = "sft"  # sft | dpo | povid | clip-dpo
    data: str = ""  # SFT conversation JSON, or preference JSONL / POVID JSON
    image_root: str = ""  # relative image paths of the data are joined to this dir (default: the data file's dir)
    init_from: str = ""  # llava-hf (or liuhaotian + --vision_tower) checkpoint dir; empty = random init
    vision_tower: str = ""  # openai CLIP dir for a liuhaotian checkpoint (its weights hold no vision tower)
    model_config: str = ""  # dir with config.json, used when init_from is empty
    tokenizer: str = ""  # dir with tokenizer.json (default: init_from, else model_config)
    out_dir: str = "out/run"
    template: str = DEFAULT_TEMPLATE  # vicuna_v1 (LLaVA-1.5 training and benchmarks) | llava_hf (model/tokenizer.py)
    max_len: int = 0  # tokens per sequence, image tokens included; 0 = the checkpoint's max_position_embeddings
    image_aspect_ratio: str = ""  # pad | square; "" = the checkpoint's config (pad for LLaVA-1.5)
    on_bad_sample: str = "error"  # error | skip (skips are counted by reason and reported)
    image_cache_mb: float = 1024  # preprocessed images kept in memory, least recently used out first (0 = none)
    # optimisation
    max_epochs: float = 1.0  # passes over the usable samples, when max_steps is 0
    max_steps: int = 0  # > 0: exactly this many optimizer steps (overrides max_epochs)
    batch_size: int = 16  # global, over all ranks: samples (sft) or pairs (dpo/povid) per step; 0 = micro x ranks
    micro_batch_size: int = 16  # per rank per forward; accumulation = batch_size / (micro_batch_size * world)
    lr: float = 1e-4
    projector_lr: float = 0.0  # with --train_projector=True: the projector's lr (0 = lr)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    warmup_ratio: float = 0.0  # > 0: warmup = ceil(ratio * steps), as transformers' Trainer (overrides warmup_steps)
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
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
    fused_loss: bool = True  # dpo_fused.py's loss; False = summed log-probs, then dpo.py's loss (the plain composition)
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


CHOICES = {"mode": ("sft", "dpo", "povid", "clip-dpo"), "on_bad_sample": ("error", "skip"), "loss_type": LOSS_TYPES,
           "noise_tokens_from": ("policy", "each"), "dtype": ("auto", "float32", "bfloat16"),
           "device": ("auto", "cpu", "cuda"), "template": tuple(TEMPLATES), "image_aspect_ratio": ("", "pad", "square")}


def _typed(key, val, t, src):
    """A command-line string or a recipe value -> the default's type, or a clear error."""
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


def _read_recipe(path):
    """A TOML recipe (recipes/*.toml) or a JSON config file -> its (key, value) pairs."""
    if path.endswith(".toml"):
        from recipes import load
        return list(load(path)[0].items())
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"config file {path}: {e}") from None
    if not isinstance(obj, dict):
        raise SystemExit(f"config file {path}: expected a JSON object")
    return list(obj.items())


def parse_config(argv) -> Config:
    cfg = Config()
    types = {f.name: type(f.default) for f in fields(Config)}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, val = arg[2:].partition("=")
            if not eq:
                raise SystemExit(f"arguments are --key=value, got {arg!r}")
            pairs, src = [(key, val)], "command line"
        else:
            pairs, src = _read_recipe(arg), arg
        for key, val in pairs:
            if key not in types:
                raise SystemExit(f"{src}: unknown config key {key!r}")
            setattr(cfg, key, _typed(key, val, types[key], src))
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise SystemExit(f"--{key} must be one of {', '.join(map(repr, allowed))}; got {getattr(cfg, key)!r}")
    if not cfg.data:
        raise SystemExit("--data is required")
    if not cfg.init_from and not cfg.model_config:
        raise SystemExit("give --init_from (a checkpoint dir) or --model_config (a config dir, random init)")
    if cfg.batch_size < 0 or cfg.micro_batch_size < 1 or cfg.max_steps < 0 or (cfg.max_steps == 0 and
                                                                               cfg.max_epochs <= 0):
        raise SystemExit("batch_size must be >= 0 (0 = micro_batch_size x ranks), micro_batch_size >= 1, and "
                         "max_steps > 0 or max_epochs > 0")
    if cfg.ref_cache and cfg.mode == "povid":
        raise SystemExit("--ref_cache needs static pairs; povid's noise-triggered answers are made online")
    if cfg.rpo_alpha < 0:
        raise SystemExit(f"--rpo_alpha must be >= 0, got {cfg.rpo_alpha}")
    if not 0 <= cfg.noise_t < cfg.noise_steps:
        raise SystemExit(f"--noise_t must be in [0, noise_steps={cfg.noise_steps})")
    if cfg.projector_lr and not cfg.train_projector:
        raise SystemExit("--projector_lr is the projector's learning rate: it needs --train_projector=True")
    return cfg


def resolve_length(cfg: Config, n_rows: int) -> Config:
    """Steps and warmup from epochs and ratios, now that the data's size is known; saved resolved in config.json."""
    steps = cfg.max_steps or math.ceil(cfg.max_epochs * n_rows / cfg.batch_size)
    warmup = math.ceil(cfg.warmup_ratio * steps) if cfg.warmup_ratio > 0 else cfg.warmup_steps
    return replace(cfg, max_steps=steps, warmup_steps=warmup)


def lr_factor(step: int, cfg: Config) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio: the multiplier of every param group's base lr. A pure
    function of the step: it is the scheduler, and the step in the checkpoint is its whole state."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
