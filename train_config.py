"""train.py's configuration: every flag with its default, how a recipe file and the command line set them (a
helper of train.py), and the two functions of the config alone: the run's length and the learning-rate schedule.

    cfg = parse_config(["recipes/povid_stage1.toml", "--init_from=ckpt/llava-1.5-7b-hf", "--data=pairs.json"])

Arguments are read left to right, later ones win: a TOML recipe (recipes/*.toml) or JSON config file sets its keys,
`--key=value` sets one; every value is checked against the default's type and the allowed choices, with an error
that names the file or the flag. resolve_length() turns epochs and warmup_ratio into steps once the data's size is
known; lr_factor() is linear warmup then cosine to min_lr_ratio (POVID: warmup 3%, cosine to 0).
"""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, fields, replace

from dpo import LOSS_TYPES
from model.files import read_json
from model.lora import DEFAULT_TARGETS
from model.tokenizer import DEFAULT_TEMPLATE, TEMPLATES


@dataclass
class Config:
    mode: str = "sft"  # sft | dpo | povid | clip-dpo
    data: str = ""  # SFT conversation JSON, or preference JSONL / POVID JSON (required)
    image_root: str = ""  # relative image paths of the data are joined to this dir (default: the data file's dir)
    init_from: str = ""  # llava-hf (or liuhaotian + --vision_tower) checkpoint dir; empty = random init
    vision_tower: str = ""  # openai CLIP dir for a liuhaotian checkpoint (its weights hold no vision tower)
    model_config: str = ""  # dir with config.json, used when init_from is empty
    tokenizer: str = ""  # dir with tokenizer.json (default: init_from, else model_config)
    out_dir: str = "out/run"  # config.json, metrics.jsonl, ckpt/, model/ (train.py's docstring)
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
    lr: float = 1e-4  # peak learning rate (of the LoRA adapters, or of every trained weight)
    projector_lr: float = 0.0  # the projector's own lr when it trains (0 = lr; POVID's mm_projector_lr)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10  # linear warmup from lr / warmup_steps
    warmup_ratio: float = 0.0  # > 0: warmup = ceil(ratio * steps), as transformers' Trainer (instead of warmup_steps)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    adam_beta1: float = 0.9  # AdamW
    adam_beta2: float = 0.95  # AdamW
    adam_eps: float = 1e-8  # AdamW
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping (the norm is still logged)
    # what trains
    lora_rank: int = 0  # 0 = full fine-tuning (the vision tower frozen unless --train_vision)
    lora_alpha: float = 16.0  # LoRA's scale is alpha / rank
    lora_dropout: float = 0.0  # dropout on the adapters' input
    lora_targets: str = ",".join(DEFAULT_TARGETS)  # decoder linear layers; lm_head is never wrapped
    train_projector: bool = False  # with LoRA: also train the projector (POVID most likely did not)
    train_vision: bool = False  # the CLIP tower; True for the toy world, which has no pretrained tower
    # DPO / POVID
    beta: float = 0.1  # DPO's beta: the strength of the pull towards the reference
    loss_type: str = "sigmoid"  # sigmoid | hinge | ipo | robust (dpo.py); POVID's terms are sigmoid
    label_smoothing: float = 0.0  # sigmoid (cDPO) and robust: the assumed rate of flipped labels, in [0, 0.5)
    rpo_alpha: float = 0.0  # dpo / povid / clip-dpo: + alpha x the chosen answer's per-token NLL (RPO; dpo.py)
    fused_loss: bool = True  # dpo_fused.py's loss; False = summed log-probs, then dpo.py's loss (the plain composition)
    ref_cache: bool = False  # dpo: reference log-probs computed once, stored on disk (the same numbers)
    ref_cache_dir: str = ""  # where the reference cache goes (default: out_dir)
    povid_stage1_steps: int = 0  # povid: run stage 1 (dpo + merge) first for this many steps, into out_dir/stage1
    povid_weight_injected: float = 0.5  # POVID: the weight of DPO(chosen, injected hallucination)
    povid_weight_noise: float = 0.5  # POVID: the weight of DPO(chosen, noise-triggered answer)
    noise_tokens_from: str = "each"  # each: the reference picks its own noise tokens (POVID's code) | policy
    noise_t: int = 500  # POVID's k: the DDPM step the image is noised to
    noise_schedule: str = "sigmoid"  # the DDPM beta schedule (noise.py): sigmoid (POVID's) | linear | cosine
    noise_steps: int = 1000  # the DDPM schedule's number of steps
    noise_beta_start: float = 1e-5  # the schedule's first beta
    noise_beta_end: float = 5e-3  # the schedule's last beta
    # system
    seed: int = 0  # data order, LoRA init, POVID's noise (a random init too)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # frozen weights: auto = bfloat16 under LoRA on CUDA, else float32; trained ones are fp32
    grad_checkpointing: bool = False  # recompute each decoder block in backward: less memory, ~30% more compute
    fsdp: bool = False  # FSDP2 fully_shard per decoder block (torchrun), for models that do not fit replicated
    log_every: int = 10  # a metrics.jsonl line every N steps (and the first and last)
    save_every: int = 0  # a checkpoint every N steps (0 = only at the end)
    export_every: int = 0  # also export the merged model every N steps into out_dir/exports/step_NNNNNN/ (0 = never)
    resume: bool = False  # continue from out_dir/ckpt (the same data and settings; bit-exact on the CPU)
    overwrite: bool = False  # start afresh in an out_dir that holds a run, replacing its metrics, checkpoint, model
    stop_after: int = 0  # exit after this many steps as if killed, keeping the checkpoint (tests, time limits)
    peak_tflops: float = 0.0  # the device's peak for the logged MFU; 0 = look the GPU up


CHOICES = {"mode": ("sft", "dpo", "povid", "clip-dpo"), "on_bad_sample": ("error", "skip"), "loss_type": LOSS_TYPES,
           "noise_tokens_from": ("policy", "each"), "dtype": ("auto", "float32", "bfloat16"),
           "device": ("auto", "cpu", "cuda"), "template": tuple(TEMPLATES), "image_aspect_ratio": ("", "pad", "square"),
           "noise_schedule": ("sigmoid", "linear", "cosine")}

BOUNDS = {  # key: (test, what the value must be); each checked on its own, before any work
    "max_len": (lambda v: v >= 0, ">= 0 (0 = the checkpoint's context)"),
    "image_cache_mb": (lambda v: v >= 0, ">= 0 (0 = no cache)"),
    "max_epochs": (lambda v: v > 0, "> 0"),
    "max_steps": (lambda v: v >= 0, ">= 0 (0 = --max_epochs decides)"),
    "batch_size": (lambda v: v >= 0, ">= 0 (0 = micro_batch_size x ranks)"),
    "micro_batch_size": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "projector_lr": (lambda v: v >= 0, ">= 0 (0 = lr)"),
    "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_eps": (lambda v: v > 0, "> 0"),
    "grad_clip": (lambda v: v >= 0, ">= 0 (0 = no clipping)"),
    "lora_rank": (lambda v: v >= 0, ">= 0 (0 = full fine-tuning)"),
    "lora_alpha": (lambda v: v > 0, "> 0"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta": (lambda v: v > 0, "> 0"),
    "label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "rpo_alpha": (lambda v: v >= 0, ">= 0"),
    "povid_stage1_steps": (lambda v: v >= 0, ">= 0"),
    "povid_weight_injected": (lambda v: v >= 0, ">= 0"),
    "povid_weight_noise": (lambda v: v >= 0, ">= 0"),
    "noise_steps": (lambda v: v >= 1, ">= 1"),
    "noise_beta_start": (lambda v: 0 < v < 1, "in (0, 1)"),
    "noise_beta_end": (lambda v: 0 < v < 1, "in (0, 1)"),
    "log_every": (lambda v: v >= 1, ">= 1"),
    "save_every": (lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    "export_every": (lambda v: v >= 0, ">= 0 (0 = never)"),
    "stop_after": (lambda v: v >= 0, ">= 0"),
    "peak_tflops": (lambda v: v >= 0, ">= 0"),
}

# settings that only some modes read: given to another mode they would be silently ignored, so they are errors
PREFERENCE_KEYS = ("beta", "loss_type", "label_smoothing", "rpo_alpha", "fused_loss", "ref_cache", "ref_cache_dir")
POVID_KEYS = ("povid_stage1_steps", "povid_weight_injected", "povid_weight_noise", "noise_tokens_from", "noise_t",
              "noise_schedule", "noise_steps", "noise_beta_start", "noise_beta_end")
LORA_KEYS = ("lora_alpha", "lora_dropout", "lora_targets")


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
        obj = read_json(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"config file {path}: {e}") from None
    if not isinstance(obj, dict):
        raise SystemExit(f"config file {path}: expected a JSON object")
    return list(obj.items())


def help_text() -> str:
    """`train.py --help`: every flag with its default and its comment in Config above (the one place either is
    written), in Config's groups."""
    defaults = Config()
    lines = ["usage: train.py [RECIPE.toml | CONFIG.json]... [--key=value]...", "",
             "SFT, DPO, POVID and CLIP-DPO training (train.py's docstring). Recipes and flags are read left to right, "
             "later ones win.", "", "general"]
    for line in inspect.getsource(Config).splitlines()[2:]:
        field = re.match(r"\s+(\w+): \w+ = .*?  # (.*)$", line)
        if field:
            flag = f"--{field[1]}={getattr(defaults, field[1])}"
            lines.append(f"  {flag:<36} {field[2]}" if len(flag) < 36 else f"  {flag}\n  {'':<36} {field[2]}")
        elif line.strip().startswith("# "):
            lines.append(line.strip()[2:])
    return "\n".join(lines)


def parse_config(argv) -> Config:
    """Recipes and --key=value flags, left to right -> the checked Config; --help / -h prints help_text and exits."""
    if "--help" in argv or "-h" in argv:
        print(help_text())
        raise SystemExit(0)
    cfg = Config()
    types = {f.name: type(f.default) for f in fields(Config)}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, val = arg[2:].partition("=")
            if not eq:
                raise SystemExit(f"arguments are --key=value, got {arg!r} (train.py --help lists them)")
            pairs, src = [(key, val)], "command line"
        else:
            pairs, src = _read_recipe(arg), arg
        for key, val in pairs:
            if key not in types:
                raise SystemExit(f"{src}: unknown config key {key!r} (train.py --help lists them)")
            setattr(cfg, key, _typed(key, val, types[key], src))
    check(cfg)
    return cfg


def check(cfg: Config):
    """Every value in its range and every setting read by the run, each named alone in one line (SystemExit)."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise SystemExit(f"--{key} must be one of {', '.join(map(repr, allowed))}; got {getattr(cfg, key)!r}")
    for key, (ok, what) in BOUNDS.items():
        if not ok(getattr(cfg, key)):
            raise SystemExit(f"--{key} must be {what}; got {getattr(cfg, key)!r}")
    if not cfg.data:
        raise SystemExit("--data is required (train.py --help lists every flag)")
    if not cfg.init_from and not cfg.model_config:
        raise SystemExit("give --init_from (a checkpoint dir) or --model_config (a config dir, random init)")
    if not 0 <= cfg.noise_t < cfg.noise_steps:
        raise SystemExit(f"--noise_t must be in [0, noise_steps={cfg.noise_steps}); got {cfg.noise_t}")
    default = Config()
    changed = {f.name for f in fields(Config) if getattr(cfg, f.name) != getattr(default, f.name)}
    ignored = [(k, "--mode=sft reads no preference setting") for k in PREFERENCE_KEYS + POVID_KEYS
               if cfg.mode == "sft"]
    ignored += [(k, f"it is POVID's (--mode=povid), not --mode={cfg.mode}'s") for k in POVID_KEYS
                if cfg.mode in ("dpo", "clip-dpo")]
    ignored += [(k, "POVID's two terms are sigmoid DPO") for k in ("loss_type", "label_smoothing")
                if cfg.mode == "povid"]
    ignored += [(k, "a LoRA setting, and --lora_rank=0") for k in LORA_KEYS if cfg.lora_rank == 0]
    if cfg.loss_type in ("hinge", "ipo"):
        ignored.append(("label_smoothing", f"--loss_type={cfg.loss_type} has no label smoothing"))
    if cfg.lora_rank == 0:
        ignored.append(("train_projector", "full fine-tuning (--lora_rank=0) trains the projector anyway"))
    if not cfg.ref_cache:
        ignored.append(("ref_cache_dir", "it needs --ref_cache=True"))
    if cfg.warmup_ratio > 0:
        ignored.append(("warmup_steps", "--warmup_ratio sets the warmup"))
    for key, why in ignored:
        if key in changed:
            raise SystemExit(f"--{key}={getattr(cfg, key)} would have no effect: {why}")
    if cfg.ref_cache and cfg.mode == "povid":
        raise SystemExit("--ref_cache needs static pairs; povid's noise-triggered answers are made online")
    if cfg.projector_lr and not (cfg.train_projector or cfg.lora_rank == 0):
        raise SystemExit("--projector_lr is the projector's learning rate: it needs --train_projector=True")
    if cfg.stop_after and cfg.max_steps and cfg.stop_after > cfg.max_steps:
        raise SystemExit(f"--stop_after={cfg.stop_after} would never stop a run of --max_steps={cfg.max_steps}")
    if cfg.resume and cfg.overwrite:
        raise SystemExit("--resume=True continues the run in out_dir, --overwrite=True replaces it: give one")


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
