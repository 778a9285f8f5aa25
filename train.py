"""SFT and DPO (POVID two-stage, CLIP-DPO) for LLaVA, in plain PyTorch: one machine or many (torchrun).

    python train.py --mode=sft  --data=world/train.json --model_config=world/llava_config --tokenizer=world \
        --out_dir=out/sft --train_vision=True                              # a tiny LLaVA from scratch
    python train.py --mode=dpo  --data=pairs.jsonl --init_from=out/sft/model --out_dir=out/stage1
    python train.py --mode=povid --data=pairs.jsonl --init_from=out/stage1/model --out_dir=out/povid --noise_t=500
    python train.py --mode=clip-dpo --data=clip_pairs.jsonl --init_from=out/sft/model --out_dir=out/clip_dpo
    torchrun --standalone --nproc_per_node=8 train.py --mode=dpo ... --lora_rank=128 [--fsdp=True]
    python train.py my_config.json --lr=5e-6                              # a JSON config file, then overrides

Modes
  sft       token cross-entropy on the answers of LLaVA conversation JSON.
  dpo       DPO (dpo.py) on a static preference file: chosen and rejected share one forward; the reference is the
            same network with LoRA adapters disabled (no second copy), or a frozen copy for full fine-tuning.
  povid     POVID stage 2 (Zhou et al. 2024): the preferred answer against the injected hallucination *and* the
            noise-triggered answer, made online each step: the image is DDPM-noised at --noise_t, the model reads the
            chosen answer teacher-forced under the noisy image (no_grad) and its greedy token at every answer
            position is the dispreferred sequence, scored under the clean image (hallucinate.noise_triggered_tokens).
            Run it from the merged stage-1 model (`--mode=dpo` on the injected pairs): that model is also the
            stage-2 reference. Loss = w_inj * DPO(chosen, injected) + w_noise * DPO(chosen, noise), 0.5 / 0.5.
  clip-dpo  an alias of dpo (CLIP-DPO is DPO on hallucinate.py clip-rank pairs with the same defaults).

Outputs (out_dir): config.json (the resolved config), metrics.jsonl, ckpt/ (trainable weights, optimizer, RNG and
data position; written atomically, --resume=True continues bit-exactly on CPU), model/ (the final merged model in
the llava-hf layout + tokenizer.json, loadable by transformers).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import data as D
from dpo import dpo_loss, povid_loss, sequence_sums, shift_labels
from model import Llava, LlavaConfig, Tokenizer
from model.clip import init_weights
from model.lora import adapters_disabled, apply_lora, merge_lora


# ----------------------------------------------------------------------------------------------------- config
@dataclass
class Config:
    mode: str = "sft"  # sft | dpo | povid | clip-dpo
    data: str = ""
    init_from: str = ""  # a llava-hf checkpoint dir; empty = random init from model_config (SFT from scratch)
    model_config: str = ""  # dir with config.json, used when init_from is empty
    tokenizer: str = ""  # dir with tokenizer.json (default: init_from)
    out_dir: str = "out/run"
    template: str = "llava_hf"
    max_len: int = 512
    on_bad_sample: str = "error"  # error | skip
    # optimisation
    max_steps: int = 100
    batch_size: int = 16  # global: samples (sft) or pairs (dpo) per optimizer step, over all ranks
    micro_batch_size: int = 16  # per rank per forward; accumulation = batch_size / (micro * world)
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # what trains
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    train_projector: bool = False  # with LoRA: also train the projector
    train_vision: bool = False  # sft from scratch: the toy world has no pretrained CLIP tower
    # DPO / POVID
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    povid_weight_injected: float = 0.5
    povid_weight_noise: float = 0.5
    noise_t: int = 500
    noise_schedule: str = "sigmoid"
    noise_steps: int = 1000
    noise_beta_start: float = 1e-5
    noise_beta_end: float = 5e-3
    ref_cache: bool = False  # dpo: compute reference log-probs once, cache them on disk
    # system
    seed: int = 0
    device: str = "auto"
    grad_checkpointing: bool = False
    fsdp: bool = False
    log_every: int = 10
    save_every: int = 0  # 0 = only at the end
    resume: bool = False
    stop_after: int = 0  # testing aid: exit (as if killed) after this many steps, keeping the checkpoint


def parse_config(argv) -> Config:
    cfg, seen = Config(), {}
    types = {f.name: type(getattr(cfg, f.name)) for f in fields(cfg)}
    for arg in argv:
        if not arg.startswith("--"):  # a JSON config file
            with open(arg) as f:
                pairs = list(json.load(f).items())
        else:
            if "=" not in arg:
                raise SystemExit(f"arguments are --key=value, got {arg!r}")
            pairs = [tuple(arg[2:].split("=", 1))]
        for key, val in pairs:
            if key not in types:
                raise SystemExit(f"unknown config key {key!r}")
            t = types[key]
            if isinstance(val, str) and t is bool:
                if val not in ("True", "False", "true", "false", "1", "0"):
                    raise SystemExit(f"--{key} takes True or False, got {val!r}")
                val = val in ("True", "true", "1")
            try:
                val = t(val)
            except (TypeError, ValueError):
                raise SystemExit(f"--{key}={val!r}: expected {t.__name__}") from None
            seen[key] = val
    for k, v in seen.items():
        setattr(cfg, k, v)
    if cfg.mode not in ("sft", "dpo", "povid", "clip-dpo"):
        raise SystemExit(f"--mode must be sft, dpo, povid or clip-dpo, got {cfg.mode!r}")
    if cfg.on_bad_sample not in ("error", "skip"):
        raise SystemExit("--on_bad_sample must be error or skip")
    if not cfg.data:
        raise SystemExit("--data is required")
    if not cfg.init_from and not cfg.model_config:
        raise SystemExit("give --init_from (a checkpoint) or --model_config (random init)")
    return cfg


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ----------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(out_dir, model, opt, step, extra):
    """Trainable weights + optimizer + RNG + data position, swapped in atomically as one directory."""
    final, tmp, prev = (os.path.join(out_dir, n) for n in ("ckpt", "ckpt.tmp", "ckpt.prev"))
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, os.path.join(tmp, "trainable.safetensors"))
    torch.save(opt.state_dict(), os.path.join(tmp, "optimizer.pt"))
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, os.path.join(tmp, "rng.pt"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({"step": step, **extra}, f)
    if os.path.exists(final):
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(final, prev)
    os.replace(tmp, final)
    shutil.rmtree(prev, ignore_errors=True)


def load_checkpoint(out_dir, model, opt):
    for name in ("ckpt", "ckpt.prev"):  # ckpt.prev survives a crash between the two renames
        d = os.path.join(out_dir, name)
        if os.path.isfile(os.path.join(d, "state.json")):
            break
    else:
        return 0
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in load_file(os.path.join(d, "trainable.safetensors")).items():
            if n not in params:
                raise KeyError(f"{d}: checkpoint parameter {n!r} is not in the model (config changed?)")
            params[n].copy_(t)
    opt.load_state_dict(torch.load(os.path.join(d, "optimizer.pt"), weights_only=True))
    rng = torch.load(os.path.join(d, "rng.pt"), weights_only=False)  # our own file: tensors + python tuples
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    with open(os.path.join(d, "state.json")) as f:
        return json.load(f)["step"]


# ----------------------------------------------------------------------------------------------------- steps
def masked_ce(hidden, weight, labels):
    """SFT: summed token cross-entropy over labelled positions, through the fused kernel. Returns (sum, count)."""
    lp = sequence_sums(hidden, weight, labels)  # (B,) summed log-probs of the answers
    return -lp.sum(), int((shift_labels(labels) != -100).sum())


def reference(raw, ref_model):
    """The reference forward: a frozen copy (full fine-tuning) or the same network with adapters off (LoRA)."""
    if ref_model is not None:
        return torch.no_grad(), ref_model
    return _Both(torch.no_grad(), adapters_disabled(raw)), raw


class _Both:  # two context managers as one
    def __init__(self, a, b):
        self.a, self.b = a, b

    def __enter__(self):
        self.a.__enter__()
        self.b.__enter__()

    def __exit__(self, *exc):
        self.b.__exit__(*exc)
        self.a.__exit__(*exc)


def dpo_logps(model, batch, noise_labels=None):
    """One forward of [chosen; rejected]; returns (pi_chosen, pi_rejected, pi_noise or None), each (B,)."""
    h = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], hidden=True)  # (2B, T, D)
    w = _lm_head(model).weight
    lp = sequence_sums(h, w, batch["labels"])  # (2B,)
    B = lp.shape[0] // 2
    noise = None if noise_labels is None else sequence_sums(h[:B], w, noise_labels)
    return lp[:B], lp[B:], noise


def _lm_head(model):
    return (model.module if hasattr(model, "module") else model).lm_head


class HiddenForward(torch.nn.Module):
    """Wraps Llava so DDP/FSDP see one forward returning hidden states (the LM head is applied by the kernel)."""

    def __init__(self, llava):
        super().__init__()
        self.llava = llava
        self.lm_head = llava.lm_head

    def forward(self, input_ids, pixel_values, attention_mask, hidden=True):
        return self.llava.hidden_states(input_ids, pixel_values, attention_mask)


# ----------------------------------------------------------------------------------------------------- main
def main(argv):
    cfg = parse_config(argv)
    if cfg.mode == "clip-dpo":
        cfg.mode = "dpo"  # same objective; the name only records where the pairs came from
    # -------------------------------------------------------------- distributed
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        import torch.distributed as dist
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        rank, world, local = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    else:
        rank, world, local = 0, 1, 0
    master = rank == 0
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda":
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    per_rank = cfg.batch_size // world
    assert cfg.batch_size % world == 0 and per_rank % cfg.micro_batch_size == 0, \
        f"batch_size {cfg.batch_size} must split into {world} ranks x micro_batch_size {cfg.micro_batch_size}"
    accum = per_rank // cfg.micro_batch_size
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else _Null()

    def print0(*a):
        if master:
            print(*a, flush=True)

    # -------------------------------------------------------------- model
    if cfg.init_from:
        model = Llava.from_pretrained(cfg.init_from, device=device)
    else:
        model = Llava(LlavaConfig.from_dir(cfg.model_config)).to(device)
        init_weights(model)
    tok = Tokenizer.from_pretrained(cfg.tokenizer or cfg.init_from or cfg.model_config)
    mc = model.config
    model.language_model.gradient_checkpointing = cfg.grad_checkpointing
    ref_model = None
    if cfg.mode != "sft" and cfg.lora_rank == 0:  # full fine-tuning keeps a frozen reference copy
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.lora_rank > 0:
        model.requires_grad_(False)
        apply_lora(model.language_model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
        model.projector.requires_grad_(cfg.train_projector)
    else:
        model.vision_tower.requires_grad_(cfg.train_vision)
    model.train()
    # dropout off in DPO: the reference and the policy must see the same network (POVID's disable_dropout)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print0(f"mode {cfg.mode}: {n_train:,} trainable of {sum(p.numel() for p in model.parameters()):,} parameters; "
           f"world {world}, micro {cfg.micro_batch_size} x accum {accum}, device {device}")
    net = HiddenForward(model)
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard
        for layer in model.language_model.layers:
            fully_shard(layer)
        fully_shard(net)
    elif ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(net, device_ids=[local] if device.startswith("cuda") else None)

    # -------------------------------------------------------------- data
    skips = D.Skips(cfg.on_bad_sample)
    cache = D.ImageCache(mc.image_size, pad=mc.image_aspect_ratio == "pad")
    loader = D.load_sft if cfg.mode == "sft" else D.load_pairs
    rows = loader(cfg.data, tok, mc.num_image_tokens, cfg.template, cfg.max_len, skips)
    rows = D.check_images(rows, cache, skips)
    if not rows:
        raise SystemExit(f"{cfg.data}: no usable samples\n{skips.report()}")
    print0(f"data: {len(rows)} samples from {cfg.data}\n{skips.report()}")
    collate = D.collate_sft if cfg.mode == "sft" else D.collate_pairs
    schedule = None
    if cfg.mode == "povid":
        from hallucinate import noise_triggered_tokens
        from noise import NoiseSchedule
        schedule = NoiseSchedule(cfg.noise_schedule, cfg.noise_steps, cfg.noise_beta_start, cfg.noise_beta_end)

    def global_batch(step):
        """Indices of the global batch of `step`: epochs are seeded permutations, so any step is reproducible."""
        out = []
        pos = step * cfg.batch_size
        while len(out) < cfg.batch_size:
            epoch, off = divmod(pos, len(rows))
            perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
            take = min(cfg.batch_size - len(out), len(rows) - off)
            out += perm[off:off + take].tolist()
            pos += take
        return out

    if cfg.ref_cache and cfg.mode == "povid":
        raise SystemExit("--ref_cache needs static pairs: povid's noise-triggered answers are made online")
    ref_cache = _load_ref_cache(cfg, rows, model, ref_model, collate, cache, device, tok.pad_id, print0) \
        if cfg.ref_cache else None

    # -------------------------------------------------------------- optimizer, resume
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    os.makedirs(cfg.out_dir, exist_ok=True)
    start = load_checkpoint(cfg.out_dir, model, opt) if cfg.resume else 0
    if master:
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2)
        if start:
            print0(f"resumed at step {start}")
    metrics_f = open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") if master else None

    # -------------------------------------------------------------- loop
    t_start, tokens_seen = time.time(), 0
    for step in range(start, cfg.max_steps):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = global_batch(step)
        mine = idx[rank * per_rank:(rank + 1) * per_rank]  # a disjoint shard of the global batch
        micro = [[rows[i] for i in mine[k:k + cfg.micro_batch_size]] for k in range(0, per_rank, cfg.micro_batch_size)]
        batches = [collate(m, tok.pad_id, cache) for m in micro]
        if cfg.mode == "sft":  # normalise by the global token count so micro x accum and ranks agree exactly
            n_tok = torch.tensor(float(sum(int((shift_labels(b["labels"]) != -100).sum()) for b in batches)))
            if ddp:
                torch.distributed.all_reduce(n_tok)
            denom = n_tok.item() / world
        stats = {"loss": 0.0, "chosen": 0.0, "rejected": 0.0, "acc": 0.0}
        t0 = time.time()
        for k, b in enumerate(batches):
            b = {key: v.to(device) if torch.is_tensor(v) else v for key, v in b.items()}
            last = k == len(batches) - 1
            if ddp and not cfg.fsdp:
                net.require_backward_grad_sync = last  # sync gradients only on the last micro-step
            with autocast:
                if cfg.mode == "sft":
                    h = net(b["input_ids"], b["pixel_values"], b["attention_mask"])
                    s, _ = masked_ce(h, model.lm_head.weight, b["labels"])
                    loss = s / denom
                    stats["loss"] += loss.item()
                    tokens_seen += int(b["attention_mask"].sum())
                else:
                    B = len(b["ids"])
                    noise_pol = noise_ref = None
                    if cfg.mode == "povid":  # fresh noise per sample per step, seeded by (step, rank, micro)
                        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank * 101 + k)
                        noisy = torch.stack([cache.noisy(p, cfg.noise_t, schedule, gen) for p in b["images"]])
                        noisy = noisy.to(device)
                        ch = {key: b[key][:B] for key in ("input_ids", "attention_mask", "labels")}
                        noise_pol = noise_triggered_tokens(model, ch["input_ids"], ch["labels"], noisy,
                                                           ch["attention_mask"])
                        rctx, rm = reference(model, ref_model)
                        with rctx:
                            noise_ref = noise_triggered_tokens(rm, ch["input_ids"], ch["labels"], noisy,
                                                               ch["attention_mask"])
                    pc, pr, pn = dpo_logps(net, b, noise_pol)
                    if ref_cache is not None:
                        rc = torch.stack([ref_cache[i][0] for i in b["ids"]]).to(device)
                        rr = torch.stack([ref_cache[i][1] for i in b["ids"]]).to(device)
                        rn = None
                    else:
                        rctx, rm = reference(model, ref_model)
                        with rctx:
                            rc, rr, rn = dpo_logps(HiddenForward(rm), b, noise_ref)
                    if cfg.mode == "povid":
                        losses, cr, rj = povid_loss(pc, pr, pn, rc, rr, rn, cfg.beta,
                                                    (cfg.povid_weight_injected, cfg.povid_weight_noise))
                    else:
                        losses, cr, rj = dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.loss_type, cfg.label_smoothing)
                    loss = losses.sum() / per_rank  # the mean over this rank's share of the global batch
                    stats["loss"] += loss.item()
                    stats["chosen"] += cr.sum().item() / per_rank
                    stats["rejected"] += rj.sum().item() / per_rank
                    stats["acc"] += (cr > rj).float().sum().item() / per_rank
                    tokens_seen += int(b["attention_mask"].sum())
            if not math.isfinite(loss.item()):
                raise SystemExit(f"non-finite loss {loss.item()} at step {step}, batch ids {b['ids']}; "
                                 f"the last good checkpoint in {cfg.out_dir}/ckpt is kept")
            loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        # ---------------------------------------------------------- logging and checkpoints
        if ddp:
            t = torch.tensor([stats[k] for k in ("loss", "chosen", "rejected", "acc")], device=device)
            torch.distributed.all_reduce(t)
            stats = dict(zip(("loss", "chosen", "rejected", "acc"), (t / world).tolist()))
        done = step + 1
        if master and (step % cfg.log_every == 0 or done == cfg.max_steps):
            el = time.time() - t_start
            eta = el / (done - start) * (cfg.max_steps - done)
            rec = {"step": done, "loss": stats["loss"], "lr": lr, "tokens/s": tokens_seen * world / max(el, 1e-9)}
            if cfg.mode != "sft":
                rec.update({"rewards/chosen": stats["chosen"], "rewards/rejected": stats["rejected"],
                            "rewards/margin": stats["chosen"] - stats["rejected"], "rewards/accuracy": stats["acc"]})
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()
            extra = "" if cfg.mode == "sft" else f" margin {rec['rewards/margin']:.3f} acc {stats['acc']:.2f}"
            print0(f"step {done}/{cfg.max_steps} ({100 * done / cfg.max_steps:.0f}%) loss {stats['loss']:.4f}"
                   f"{extra} lr {lr:.2e} {rec['tokens/s']:.0f} tok/s, {time.time() - t0:.2f}s/step, "
                   f"ETA {eta:.0f}s")
        if master and ((cfg.save_every and done % cfg.save_every == 0) or done == cfg.stop_after):
            save_checkpoint(cfg.out_dir, model, opt, done, {"data": cfg.data})
        if cfg.stop_after and done == cfg.stop_after:
            print0(f"stopping after step {done} (--stop_after)")
            return
    # -------------------------------------------------------------- export
    if master:
        save_checkpoint(cfg.out_dir, model, opt, cfg.max_steps, {"data": cfg.data})
        export = copy.deepcopy(model)
        n = merge_lora(export)
        export.requires_grad_(False)
        out = os.path.join(cfg.out_dir, "model")
        export.save_pretrained(out)
        tok.save_pretrained(out)
        print0(f"done: {cfg.max_steps} steps in {time.time() - t_start:.0f}s; merged {n} adapters; model -> {out}\n"
               f"{skips.report()}")
        metrics_f.close()
    if ddp:
        torch.distributed.destroy_process_group()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _load_ref_cache(cfg, rows, model, ref_model, collate, cache, device, pad_id, print0):
    """Reference log-probs of every pair, computed once (the reference never changes within a stage) and stored
    under a key of the data file's hash and the reference checkpoint, so later runs on the same pairs reuse them."""
    h = hashlib.sha256()
    with open(cfg.data, "rb") as f:
        h.update(f.read())
    for name in sorted(os.listdir(cfg.init_from)) if cfg.init_from else []:
        if name.endswith((".safetensors", ".json")):
            with open(os.path.join(cfg.init_from, name), "rb") as f:
                h.update(f.read())
    path = os.path.join(os.path.dirname(os.path.abspath(cfg.data)), f".refcache_{h.hexdigest()[:16]}.pt")
    if os.path.exists(path):
        print0(f"reference log-probs from {path}")
        return torch.load(path, weights_only=True)
    out = {}
    for k in range(0, len(rows), cfg.micro_batch_size):
        b = collate(rows[k:k + cfg.micro_batch_size], pad_id, cache)
        rctx, rm = reference(model, ref_model)
        with rctx:
            rc, rr, _ = dpo_logps(HiddenForward(rm), {key: v.to(device) if torch.is_tensor(v) else v
                                                      for key, v in b.items()})
        for i, pid in enumerate(b["ids"]):
            out[pid] = torch.stack([rc[i], rr[i]]).cpu()
    torch.save(out, path + ".tmp")
    os.replace(path + ".tmp", path)
    print0(f"reference log-probs for {len(out)} pairs cached in {path}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
