"""SFT and DPO (POVID two-stage, CLIP-DPO) for LLaVA in plain PyTorch, on one CPU or many GPUs (torchrun).

    torchrun --standalone --nproc_per_node=8 train.py recipes/povid_stage1.toml \
        --init_from=ckpt/llava-1.5-7b-hf --data=povid.json --image_root=coco/train2014 --out_dir=out/stage1
    torchrun --standalone --nproc_per_node=8 train.py recipes/povid_stage2.toml \
        --init_from=out/stage1/model --data=povid.json --image_root=coco/train2014 --out_dir=out/povid
    python train.py --mode=dpo --data=pairs.jsonl --init_from=out/sft/model --out_dir=out/dpo --lora_rank=16
    python train.py --mode=sft --data=world/train.json --model_config=world/llava_config --tokenizer=world ...

A recipe (TOML, or JSON) sets the defaults of a run, each value with a comment on its source; `--key=value` after it
overrides (`python train.py --help`: every flag, its default and meaning). A bad value, an unknown key or a setting
the run would ignore is an error before any work. The resolved config is saved as out_dir/config.json and in every
checkpoint.

Modes
  sft       token cross-entropy on every answer of LLaVA conversation JSON (normalised by the global count of
            answer tokens, so any split into ranks and micro-batches gives the same gradient).
  dpo       DPO (Rafailov et al. 2023, eq. 7; dpo.py) on a static preference file (TRL-style JSONL or POVID's JSON).
            Chosen and rejected share one forward. The reference is the initial model in every mode: the same
            network with its LoRA adapters off (no second copy of the decoder) and, where the projector or tower
            trains too, their frozen initial copies swapped in; a frozen copy of the whole model under full
            fine-tuning (reference_copies). At step 0 it scores exactly what the policy does (loss ln 2), in any
            dtype. --ref_cache=True computes its log-probs once (the same numbers, to float rounding).
  povid     POVID (Zhou et al. 2024). Stage 1 is `dpo` on the injected hallucinations, then the adapters are merged
            on export. Stage 2 (this mode): w_inj * DPO(chosen, injected) + w_noise * DPO(chosen, noise-triggered),
            with the merged stage-1 model as start and reference. The noise-triggered answer is made online every
            step: the image is DDPM-noised at --noise_t on its [0, 1] pixels (fresh seeded noise per sample per
            step), the policy reads the chosen answer teacher-forced under the noisy image with no grad, and its
            greedy token at every answer position (hallucinate.noise_triggered_tokens) is the dispreferred answer,
            scored on the hidden states of the chosen sequence's clean forward. --noise_tokens_from=each: the
            reference picks its own tokens, as POVID's released code does. --povid_stage1_steps=N runs stage 1 first
            in the same command (into out_dir/stage1/).
  clip-dpo  an alias of dpo: CLIP-DPO (Ouali et al. 2024) is DPO on hallucinate.py clip-rank pairs.
  --rpo_alpha=A (dpo, povid, clip-dpo) adds A x the chosen answer's per-token NLL to every pair's loss (RPO; dpo.py).
The loss of dpo / povid / clip-dpo is preference_loss_fn below, in dpo.py's terms. By default the policy runs it
fused (dpo_fused.py: the LM head's gradients formed in the forward, no (B, T, V) logits); --fused_loss=False runs the
plain composition (summed log-probs, then the loss), the readable cross-check. Net names each pass of the network.

Length: --max_epochs (default 1) over the usable samples, or --max_steps=N (> 0 wins; what a rehearsal cuts).
Warmup --warmup_ratio of the steps (or --warmup_steps), then cosine to lr * min_lr_ratio. --projector_lr: the
projector's own learning rate when it trains (--train_projector=True, POVID's --mm_projector_lr).

Outputs in out_dir: config.json, metrics.jsonl (one JSON object per logged step), ckpt/ (trainable weights,
optimizer, RNG states, step = data position; swapped in atomically; --resume=True continues, bit-exactly on CPU,
with the checkpoint's settings and data or not at all; a new run into an out_dir that holds one needs --overwrite),
model/ (the final model, adapters merged, llava-hf layout + tokenizer and processor files; what transformers and
vLLM load), exports/step_N/ with --export_every; written by train_state.py.
"""
from __future__ import annotations

import gc
import json
import math
import os
import sys
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace

import torch
import torch.distributed as dist
import torch.nn as nn

import train_data as D
from dpo import chosen_nll, dpo_loss, povid_loss, sequence_sums, shift_labels
from dpo_fused import fused_preference_loss, pack, pair_groups, povid_groups, preference_logps, rewards
from model import Llava, LlavaConfig, Tokenizer
from model.checkpoint import takes_vision_tower
from model.files import write_atomic, write_json
from model.lora import adapters_disabled
from train_config import Config, lr_factor, parse_config, resolve_length
from train_model import build_model, make_optimizer, make_trainable, reference_copies
from train_mfu import estimate_flops, peak_flops
from train_state import (claim_out_dir, export_model, load_checkpoint, long_wait_group, metrics_until,
                         reference_cache, save_checkpoint)


# -------------------------------------------------------------------------------------------------------- the loss
def preference_loss_fn(cfg: Config, objective: str):
    """The loss of each group of sequences, in dpo.py's terms: pi, ref (g, M) the policy's and the reference's summed
    response log-probs, n (g, M) each sequence's scored-token count -> (g,) losses. M = 2 (chosen, rejected): DPO of
    any --loss_type; M = 3 (chosen, injected, noise-triggered): POVID's two-term objective; + --rpo_alpha x the
    chosen answer's per-token NLL (RPO). The fused pass takes it as it is (dpo_fused.py forms the LM head's
    gradients from it); the plain pass (--fused_loss=False) sums the log-probs first and calls it on them."""
    weights = (cfg.povid_weight_injected, cfg.povid_weight_noise)

    def loss_fn(pi, ref, n):
        if objective == "povid":
            losses, _, _ = povid_loss(pi[:, 0], pi[:, 1], pi[:, 2], ref[:, 0], ref[:, 1], ref[:, 2], cfg.beta, weights)
        else:
            losses, _, _ = dpo_loss(pi[:, 0], pi[:, 1], ref[:, 0], ref[:, 1], cfg.beta, cfg.loss_type,
                                    cfg.label_smoothing)
        return losses + cfg.rpo_alpha * chosen_nll(pi[:, 0], n[:, 0]) if cfg.rpo_alpha else losses
    return loss_fn


def scored_tokens(b, noise_targets=None):
    """(B,) scored tokens of each row, + (P,) of POVID's noise-triggered answers: the n of preference_loss_fn."""
    n = (shift_labels(b["labels"]) != -100).sum(1)
    return n if noise_targets is None else torch.cat([n, (shift_labels(noise_targets) != -100).sum(1)])


class Net(nn.Module):
    """The network as the loop runs it: named passes, each called through forward - net("logps", b) - so that DDP
    and FSDP see every use (FSDP gathers the parameters for each; DDP readies its gradient hooks for the pass with
    grad). `b` is a collated batch (train_data.py). The LM head is applied to the scored rows only: (B, T, V) logits
    are never built.

      logps            (B,) summed log-probs of each row's labelled tokens: SFT's loss, the reference, and the policy
                       under --fused_loss=False. POVID's noise targets (P, T), scored on the first P rows' (the
                       chosen answers') clean hidden states, append one sum per chosen row: (B + P,)
      preference_loss  the policy's whole preference loss, its LM-head gradients formed in the forward
                       (dpo_fused.py) -> (loss, pi (S,))
      noise_tokens     POVID: the greedy token at every answer position under the noisy image, the chosen answer
                       teacher-forced (hallucinate.noise_triggered_tokens) -> (B, T)

    With fused=True and the groups given, logps runs preference_loss's own kernel: a reference whose weights equal
    the policy's scores exactly what the policy scores, so every run starts at ln 2."""

    PASSES = ("logps", "preference_loss", "noise_tokens", "image_features", "povid_reference")

    def __init__(self, llava: Llava, fused: bool = True):
        super().__init__()
        self.llava, self.fused = llava, fused

    def forward(self, name: str, *args):
        if name not in self.PASSES:
            raise ValueError(f"unknown pass {name!r}; one of {self.PASSES}")
        return getattr(self, name)(*args)

    def _hidden(self, b):  # (B, T, D); right-padded: causal attention, no mask; the images' features if computed
        return self.llava.hidden_states(b["input_ids"], b["pixel_values"], None, b.get("image_features"))

    def logps(self, b, noise_targets=None, groups=None, h=None):
        h, w = self._hidden(b) if h is None else h, self.llava.lm_head.weight  # (B, T, D), (V, D)
        if self.fused and groups is not None:
            rows, tgt, seq = pack(h, b["labels"], noise_targets, b.get("scored_rows"))
            return preference_logps(rows, w, tgt, seq, groups, check=False)  # (S,)
        lp = sequence_sums(h, w, b["labels"], b.get("scored_rows"))  # (B,)
        if noise_targets is None:
            return lp
        return torch.cat([lp, sequence_sums(h[: noise_targets.shape[0]], w, noise_targets)])  # (B + P,)

    def preference_loss(self, b, noise_targets, groups, ref, loss_fn):
        rows, tgt, seq = pack(self._hidden(b), b["labels"], noise_targets, b.get("scored_rows"))  # scored rows only
        return fused_preference_loss(rows, self.llava.lm_head.weight, tgt, seq, groups, ref, loss_fn, check=False)

    def noise_tokens(self, b):
        from hallucinate import greedy_tokens
        return greedy_tokens(self.llava.lm_head, self._hidden(b), b["labels"], b.get("scored_rows"))

    def image_features(self, pixel_values):  # (B_img, P, D): a frozen tower's, computed once for every pass
        return self.llava.image_features(pixel_values)

    def povid_reference(self, b, noisy, groups):
        """POVID with noise_tokens_from=each: the reference's two passes in one forward of [chosen; injected;
        chosen under the noisy image] -> (its noise-triggered tokens (P, T), its log-probs (3P,))."""
        P = noisy["input_ids"].shape[0]
        both = {k: torch.cat([b[k], noisy[k]]) if b.get(k) is not None else None
                for k in ("input_ids", "pixel_values", "image_features")}
        h = self._hidden(both)  # (3P, T, D)
        from hallucinate import greedy_tokens
        noise = greedy_tokens(self.llava.lm_head, h[2 * P:], noisy["labels"], noisy.get("scored_rows"))
        return noise, self.logps(b, noise, groups, h[:2 * P])


def wrap(cfg: Config, model: Llava, ref_model, ddp: bool, cuda: bool, local: int, find_unused: bool = False):
    """(net, ref_net): Net around the policy (DDP or FSDP2 over ranks), and the reference's: around the frozen copy
    (full fine-tuning), else the policy's own (Run.reference switches its adapters off). find_unused: DDP must
    expect trained parameters that a micro-batch leaves out (the projector and tower on a text-only batch)."""
    net, ref_net = Net(model, cfg.fused_loss), (Net(ref_model, cfg.fused_loss) if ref_model is not None else None)
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard
        for m in ([net] if ref_net is None else [net, ref_net]):
            for layer in m.llava.language_model.layers:
                fully_shard(layer)  # one all-gather per block: only one block is ever whole at a time
            fully_shard(m)
    elif ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(net, device_ids=[local] if cuda else None, find_unused_parameters=find_unused)
    return net, ref_net or net


# -------------------------------------------------------------------------------------------------------- data
def load_rows(cfg: Config, objective: str, tok, mc: LlavaConfig, print0, rank: int = 0, world: int = 1):
    """The usable samples (every bad one counted by reason, or an error), the image store and the collate fn. Every
    rank reads the data file; each image is opened once, by one rank, and the verdicts shared, so every rank drops
    the same samples; then the ranks check that they kept the same ones (train_data.agree_on_rows)."""
    skips = D.Skips(cfg.on_bad_sample)
    pad = mc.image_aspect_ratio == "pad"
    images = D.ImageStore(mc.image_size, pad=pad, cache_mb=cfg.image_cache_mb)
    load = D.load_sft if objective == "sft" else D.load_pairs
    rows = load(cfg.data, tok, mc.num_image_tokens, cfg.template, cfg.max_len, skips, image_root=cfg.image_root)
    rows = D.check_images(rows, D.shared_image_problems(rows, images, rank, world), skips)
    D.agree_on_rows(rows, cfg.data, world)
    if not rows:
        raise SystemExit(f"{cfg.data}: no usable sample\n{skips.report()}")
    if len(rows) < cfg.batch_size:
        raise SystemExit(f"{cfg.data}: {len(rows)} usable samples, fewer than one batch ({cfg.batch_size})\n"
                         f"{skips.report()}")
    if objective == "povid" and any(r["image"] is None for r in rows):
        raise SystemExit(f"{cfg.data}: povid needs an image in every pair (its noise-triggered answers noise it)")
    kinds = Counter(r.get("strategy") or "-" for r in rows) if objective != "sft" else {}
    print0(f"data: {len(rows)} samples from {cfg.data} {dict(kinds) if kinds else ''}; images "
           f"{'padded to square' if pad else 'centre-cropped'}\n{skips.report()}")
    return rows, images, skips, D.collate_sft if objective == "sft" else D.collate_pairs


def global_batch(cfg: Config, step: int, n_rows: int):
    """Row indices of the global batch of `step`: each epoch is a seeded permutation, so the data position is the
    step alone, and every rank computes the same batch and takes its own disjoint slice."""
    out, pos = [], step * cfg.batch_size
    while len(out) < cfg.batch_size:
        epoch, off = divmod(pos, n_rows)
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        take = min(cfg.batch_size - len(out), n_rows - off)
        out += perm[off:off + take].tolist()
        pos += take
    return out


def noise_seed(cfg: Config, step: int, sample: int) -> int:
    """The seed of POVID's noise for one sample at one step, `sample` its place in the global batch: a pure function
    of them, so a resumed run, and any split into ranks and micro-batches, draws the same noise."""
    return cfg.seed * 1_000_003 + step * 10_007 + sample


def _to(b, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}


# -------------------------------------------------------------------------------------------------------- the run
class Run:
    """Everything one training run holds: built once by setup(), then step() per optimizer step."""

    def __init__(self, cfg: Config, rank: int, world: int, local: int):
        self.rank, self.world, self.master = rank, world, rank == 0
        self.ddp = world > 1 or dist.is_initialized()
        device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        if device == "cuda":
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
        self.device, self.cuda, self.local = device, device.startswith("cuda"), local
        if cfg.batch_size == 0:  # one micro-batch per rank, no accumulation (POVID: 1 pair per GPU)
            cfg = replace(cfg, batch_size=cfg.micro_batch_size * world)
        self.per_rank = cfg.batch_size // world
        if cfg.batch_size % world or self.per_rank % cfg.micro_batch_size:
            raise SystemExit(f"batch_size {cfg.batch_size} must split into {world} rank(s) x micro_batch_size "
                             f"{cfg.micro_batch_size} x a whole number of accumulation steps")
        self.objective = "dpo" if cfg.mode == "clip-dpo" else cfg.mode
        self.wait = long_wait_group()  # what the others wait in while rank 0 writes a checkpoint or a model
        # bf16 matmuls under autocast: on CUDA always, on the CPU with --dtype=bfloat16 (frozen weights in bf16)
        bf16 = self.cuda or cfg.dtype == "bfloat16"
        self.autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else nullcontext()
        if self.cuda:  # the GEMMs autocast leaves in fp32 (a trained fp32 head's log-probs) on the tensor cores
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.cfg = cfg

    def print0(self, *a):
        if self.master:
            print(*a, flush=True)

    def setup(self):
        cfg, obj = self.cfg, self.objective
        frozen_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
            cfg.dtype, torch.bfloat16 if self.cuda and cfg.lora_rank > 0 else torch.float32)
        os.makedirs(cfg.out_dir, exist_ok=True)
        self.model = model = build_model(cfg, self.device, frozen_dtype)
        mc = self.mc = model.config
        if cfg.image_aspect_ratio:  # what the images are trained on is what the export's config and processor say
            mc.image_aspect_ratio = cfg.image_aspect_ratio
        if cfg.max_len == 0:  # the checkpoint's context: image tokens + text
            cfg = replace(cfg, max_len=mc.text.max_position_embeddings)
        if cfg.max_len <= mc.num_image_tokens:
            raise SystemExit(f"--max_len={cfg.max_len} leaves no room for text after the {mc.num_image_tokens} image "
                             f"tokens of {cfg.init_from or cfg.model_config} (0 = the checkpoint's "
                             f"{mc.text.max_position_embeddings})")
        try:
            self.tok = Tokenizer.from_pretrained(cfg.tokenizer or cfg.init_from or cfg.model_config)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"train.py: tokenizer: {e}") from None
        model.language_model.gradient_checkpointing = cfg.grad_checkpointing
        model.check_image_tokens = False  # the tokenizer put each image's tokens in: no check (a sync)
        self.rows, self.images, self.skips, self.collate = load_rows(cfg, obj, self.tok, mc, self.print0, self.rank,
                                                                     self.world)
        self.cfg = cfg = resolve_length(cfg, len(self.rows))
        trains = make_trainable(cfg, model)
        self.ref_model, self.frozen = reference_copies(cfg, obj, model)
        self.n_layer = sum(p.numel() for p in model.language_model.layers.parameters())
        self.n_layer_trained = sum(p.numel() for p in model.language_model.layers.parameters() if p.requires_grad)
        vision = [*model.vision_tower.parameters(), *model.projector.parameters()]
        self.frozen_vision = not any(p.requires_grad for p in vision)
        text_only = any(r["image"] is None for r in self.rows)
        self.net, self.ref_net = wrap(cfg, model, self.ref_model, self.ddp, self.cuda, self.local,
                                      find_unused=text_only and not self.frozen_vision)
        self.print0(f"mode {cfg.mode}: {trains}; world {self.world}, micro {cfg.micro_batch_size} x accum "
                    f"{self.per_rank // cfg.micro_batch_size}, {cfg.max_steps} steps (warmup {cfg.warmup_steps}), "
                    f"device {self.device}, frozen weights {str(frozen_dtype)[6:]}, max_len {cfg.max_len}")
        self.schedule = None
        if obj == "povid":
            from noise import NoiseSchedule
            self.schedule = NoiseSchedule(cfg.noise_schedule, cfg.noise_steps, cfg.noise_beta_start,
                                          cfg.noise_beta_end)
        self.ref_logps = None
        self.loss_fn = preference_loss_fn(cfg, obj)
        if cfg.ref_cache and obj == "dpo":
            def ref_pair_logps(b):  # (2, P): chosen, rejected
                return self.ref_net("logps", self.with_features(b), None, pair_groups(len(b["ids"]), self.device)
                                    ).view(2, -1)
            with self.reference():
                self.ref_logps = reference_cache(cfg, self.rows, ref_pair_logps, self.collate,
                                                 self.images, self.tok, self.device, self.autocast, self.rank,
                                                 self.world, next(model.parameters()).dtype, self.print0)
            self.ref_net, self.ref_model, self.frozen = self.net, None, {}  # the copies are no longer needed
            if cfg.fsdp:
                self.net.reshard()  # FSDP2 keeps the root group whole after a forward: shard it before the optimizer
        if cfg.fsdp:  # the optimizer must hold the shards (a whole tensor there would never reach the others)
            from torch.distributed.tensor import DTensor
            whole = [n for n, p in model.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
            if whole:
                raise RuntimeError(f"FSDP: {len(whole)} trained parameters are not sharded, e.g. {whole[:3]}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = make_optimizer(cfg, model)
        self.data_id = {"samples": len(self.rows), "samples_digest": D.rows_digest(self.rows)}
        self.start = load_checkpoint(cfg, self.net, model, self.opt, self.rank, self.data_id) if cfg.resume else 0
        self.metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
        if self.master:
            write_json(os.path.join(cfg.out_dir, "config.json"), asdict(cfg))
            resumed = self.start and os.path.isfile(self.metrics_path)
            write_atomic(self.metrics_path, metrics_until(self.metrics_path, self.start) if resumed else "")
            self.print0(f"resumed from {cfg.out_dir}/ckpt at step {self.start}" if self.start
                        else f"--resume=True: no checkpoint in {cfg.out_dir}/ckpt, so this run starts at step 0; "
                             f"writing to {cfg.out_dir}" if cfg.resume else f"writing to {cfg.out_dir}")
        self.peak = peak_flops(cfg.peak_tflops, self.device)
        return self

    @contextmanager
    def reference(self):
        """The reference's context: the frozen copy as it is (full fine-tuning); else the policy with its adapters off
        and the frozen copies of its other trained modules swapped in (reference_copies): the initial model."""
        if self.ref_model is not None:
            yield
            return
        trained = {name: getattr(self.model, name) for name in self.frozen}
        with adapters_disabled(self.model):
            try:
                for name, frozen in self.frozen.items():
                    setattr(self.model, name, frozen)
                yield
            finally:
                for name, m in trained.items():
                    setattr(self.model, name, m)

    def batches(self, step: int):
        """This rank's micro-batches of `step` and their work counts, made on the CPU in the Prefetch thread: images
        decoded, POVID's noisy images (noise_seed: a pure function of step and sample), cached reference log-probs."""
        cfg = self.cfg
        mine = global_batch(cfg, step, len(self.rows))[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        out = []
        for first in range(0, self.per_rank, cfg.micro_batch_size):
            m = mine[first:first + cfg.micro_batch_size]
            b = self.collate([self.rows[i] for i in m], self.tok.pad_id, self.images)
            if self.ref_logps is not None:  # (P, 2) chosen, rejected: copied to the GPU with the batch
                b["ref_logps"] = self.ref_logps[m]
            if self.objective == "povid":  # each sample's noise seeded by its place in the global batch
                seeds = [noise_seed(cfg, step, self.rank * self.per_rank + first + j) for j in range(len(m))]
                b["noisy_pixel_values"] = self.images.noisy_batch(b["images"], cfg.noise_t, self.schedule, seeds)
            out.append(b)
        return out, D.count_work(out)  # the counts collation knows: no sync for them

    def with_features(self, b):
        """The batch with each image's features computed once when the tower and projector are frozen (every
        recipe): chosen and rejected rows share them, the reference and the policy too (LoRA leaves them alone)."""
        if not self.frozen_vision or b["pixel_values"] is None:
            return b
        with torch.no_grad():
            f = self.net("image_features", b["pixel_values"][:len(b["pixel_values"]) // 2])  # (P_img, n, D)
        return {**b, "image_features": torch.cat([f, f])}  # chosen rows', then rejected rows'

    def pair_loss(self, b):
        """One micro-batch of pairs -> (summed loss of its pairs, chosen rewards (P,), rejected rewards (P,)). The
        reference first (no grad), then the policy: DPO (any loss type) or POVID's objective, + the RPO term. POVID's
        noise-triggered answers are made now by the current policy under the noisy images (and, with
        --noise_tokens_from=each, by the reference too, in its log-prob forward): (P, T) targets, -100 = unscored."""
        cfg, P = self.cfg, len(b["ids"])
        povid = self.objective == "povid"
        groups = povid_groups(P, self.device) if povid else pair_groups(P, self.device)  # (P, 3) or (P, 2)
        noisy = {"input_ids": b["input_ids"][:P], "pixel_values": b.get("noisy_pixel_values"),
                 "labels": b["labels"][:P], "scored_rows": b.get("chosen_rows")}
        b = self.with_features(b)
        if povid and "image_features" in b:
            with torch.no_grad():
                noisy["image_features"] = self.net("image_features", noisy["pixel_values"])
        noise_pol = noise_ref = None
        if povid:
            with torch.no_grad():
                noise_pol = noise_ref = self.net("noise_tokens", noisy)
        if self.ref_logps is not None:
            ref = b["ref_logps"].T.reshape(-1)  # (2P,) chosen, rejected
        else:
            with torch.no_grad(), self.reference():
                if povid and cfg.noise_tokens_from == "each":
                    noise_ref, ref = self.ref_net("povid_reference", b, noisy, groups)  # (3P,)
                else:
                    ref = self.ref_net("logps", b, noise_ref, groups)  # (2P,) or POVID's (3P,)
        if cfg.fused_loss:  # the same loss, the LM head's gradients formed in the forward (dpo_fused.py)
            loss, pi = self.net("preference_loss", b, noise_pol, groups, ref, self.loss_fn)
        else:  # the plain composition: summed log-probs with grad, then the loss on them
            pi = self.net("logps", b, noise_pol)
            loss = self.loss_fn(pi[groups], ref[groups], scored_tokens(b, noise_pol)[groups]).sum()
        cr, rj = rewards(pi, ref, groups, cfg.beta)  # (P,) each, the first two sequences of every group
        return loss, cr, rj

    # ------------------------------------------------------------------------------------ BEGIN training step
    def step(self, step: int):
        """One optimizer step over this rank's micro-batches. Returns the logged numbers (all ranks reduced)."""
        cfg, dev = self.cfg, self.device
        lr = lr_factor(step, cfg)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * lr
        batches, work = self.prefetch.get(step)  # collated on the CPU, in a thread
        if self.objective == "sft":  # normalise by the global answer-token count: ranks and accumulation agree
            n_scored = torch.full((), work["targets"], device=dev)  # a fill, not a copy from host memory
            if self.ddp:
                dist.all_reduce(n_scored)
            denom = n_scored / self.world  # DDP averages gradients over ranks
        stats = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, chosen, rejected, accuracy
        finite = []
        for k, b in enumerate(batches):
            if self.ddp and not cfg.fsdp:
                self.net.require_backward_grad_sync = k == len(batches) - 1  # all-reduce gradients on the last only
            b = _to(b, dev)
            with self.autocast:
                if self.objective == "sft":
                    loss = -self.net("logps", b).sum() / denom
                    cr = rj = torch.zeros(1, device=dev)
                else:
                    loss, cr, rj = self.pair_loss(b)
                    loss = loss / self.per_rank  # summed over micro-batches: the mean over this rank's share
            loss.backward()
            finite.append(torch.isfinite(loss.detach()))
            stats += torch.stack([loss.detach(), cr.sum() / self.per_rank, rj.sum() / self.per_rank,
                                  (cr > rj).sum() / self.per_rank]).double()
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.opt.step()  # a non-finite step is caught by settle() before any checkpoint or export (no sync here)
        self.opt.zero_grad(set_to_none=True)
        return {"step": step, "stats": stats / self.world, "finite": torch.stack(finite), "grad_norm": norm,
                "lr": cfg.lr * lr, "work": work, "ids": [b["ids"] for b in batches]}

    def settle(self, steps: list, work: dict):
        """The host reads the steps since the last settle() at once (a step itself never waits for the device):
        stops at the first non-finite loss or gradient norm among them, before anything is logged, saved or
        exported, so the last good checkpoint is kept; returns the last step's numbers and `work` (count_work
        since the last log), reduced over ranks."""
        bad = torch.stack([~s["finite"] for s in steps])  # (n, micro) this rank's non-finite micro-batches
        total = torch.cat([steps[-1]["stats"], bad.sum(1).double()])  # + the bad micro-batches of each step
        work = [work[k] for k in D.WORK]  # host numbers: summed over ranks with the rest
        if self.ddp:  # one collective for every logged number
            total = torch.cat([total, torch.tensor(work, dtype=torch.float64).to(self.device)])
            dist.all_reduce(total)
        norms = torch.stack([s["grad_norm"] for s in steps]).double()  # (n,) the same on every rank
        read = torch.cat([total, norms, bad.flatten().double()]).tolist()  # the one host sync
        sizes = (4, len(steps), len(work) if self.ddp else 0, len(steps), bad.numel())
        stats, n_bad, summed, norms, mine = (read[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(5))
        for i, st in enumerate(steps):
            if n_bad[i]:  # a NaN/inf loss on some rank: each names its bad micro-batches
                ids = [x for k, b in enumerate(st["ids"]) if mine[i * bad.shape[1] + k] for x in b]
                if self.ddp:
                    parts = [None] * self.world
                    dist.all_gather_object(parts, ids)
                    ids = [x for p in parts for x in p]
                raise SystemExit(f"non-finite loss at step {st['step']} (batch ids {ids}); stopped, the last good "
                                 f"checkpoint in {self.cfg.out_dir}/ckpt is kept")
            if not math.isfinite(norms[i]):
                raise SystemExit(f"non-finite gradient norm at step {st['step']}; stopped, the last good checkpoint "
                                 f"in {self.cfg.out_dir}/ckpt is kept")
        return {"loss": stats[0], "chosen": stats[1], "rejected": stats[2], "accuracy": stats[3],
                "lr": steps[-1]["lr"], "grad_norm": norms[-1], "work": dict(zip(D.WORK, summed or work))}
    # ------------------------------------------------------------------------------------ END training step

    def mfu(self, work: dict, seconds: float):
        """Model FLOPs utilisation of `work` done in `seconds` over every rank (None without a known peak)."""
        if not self.peak:
            return None
        flops = estimate_flops(self.mc, self.n_layer, self.n_layer_trained, work,
                               self.objective != "sft" and self.ref_logps is None,
                               {"povid": 1 + (self.cfg.noise_tokens_from == "each")}.get(self.objective, 0),
                               self.frozen_vision and self.objective != "sft")
        return flops / seconds / (self.peak * self.world)

    def log(self, done, s, since, work, t_run):
        """One line of metrics.jsonl (and stdout) for the steps since the last log (their work summed)."""
        cfg, el = self.cfg, max(time.time() - since, 1e-9)
        rec = {"step": done, "loss": s["loss"], "lr": s["lr"], "grad_norm": s["grad_norm"],
               "tokens/s": work["tokens"] / el}
        if self.objective != "sft":
            rec.update({"rewards/chosen": s["chosen"], "rewards/rejected": s["rejected"],
                        "rewards/margin": s["chosen"] - s["rejected"], "rewards/accuracy": s["accuracy"]})
        mfu = self.mfu(work, el)
        if mfu is not None:
            rec["mfu"] = mfu
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        eta = (time.time() - t_run) / (done - self.start) * (cfg.max_steps - done)
        extra = "" if self.objective == "sft" else f" margin {rec['rewards/margin']:.3f} acc {s['accuracy']:.2f}"
        mfu = f" mfu {100 * mfu:.1f}%" if mfu is not None else ""
        self.print0(f"step {done}/{cfg.max_steps} ({100 * done / cfg.max_steps:.0f}%) loss {s['loss']:.4f}{extra} "
                    f"|g| {s['grad_norm']:.3f} lr {s['lr']:.2e} {rec['tokens/s']:.0f} tok/s{mfu} ETA {eta:.0f}s")

    def loop(self):
        """Steps from the checkpoint's position to the end; logs, checkpoints and exports along the way. Returns
        the final model's directory, or None when stopped early by --stop_after."""
        cfg = self.cfg
        t_run = t_log = time.time()
        done, work, pending = self.start, Counter(), []
        with D.Prefetch(self.batches, self.start, cfg.max_steps, pin=self.cuda) as self.prefetch:
            for step in range(self.start, cfg.max_steps):
                pending.append(self.step(step))
                done = step + 1
                work.update(pending[-1]["work"])
                logs = step % cfg.log_every == 0 or done == cfg.max_steps
                export = cfg.export_every and done % cfg.export_every == 0 and done < cfg.max_steps  # the last: model/
                save = (cfg.save_every and done % cfg.save_every == 0) or done == cfg.stop_after
                if logs or export or save:  # the only steps that wait for the device
                    s, pending = self.settle(pending, work), []
                if self.master and logs:
                    self.log(done, s, t_log, s["work"], t_run)
                    t_log, work = time.time(), Counter()
                if export:
                    export_model(cfg, self.net, self.model, self.tok, self.rank,
                                 os.path.join(cfg.out_dir, "exports", f"step_{done:06d}"), wait=self.wait)
                if save:
                    save_checkpoint(cfg, self.net, self.model, self.opt, done, self.rank, self.wait, self.data_id)
                if done == cfg.stop_after:
                    self.print0(f"stopping after step {done} (--stop_after); --resume=True continues")
                    return None
        if done > self.start or not os.path.isfile(os.path.join(cfg.out_dir, "ckpt", "state.json")):
            save_checkpoint(cfg, self.net, self.model, self.opt, done, self.rank, self.wait, self.data_id)
        path = export_model(cfg, self.net, self.model, self.tok, self.rank, wait=self.wait)
        self.print0(f"done: step {done}/{cfg.max_steps} in {time.time() - t_run:.0f}s; model -> {path}\n"
                    f"{self.skips.report()}")
        return path


def train(cfg: Config, rank: int, world: int, local: int):
    run = Run(cfg, rank, world, local)
    try:
        return run.setup().loop()
    finally:
        if run.wait is not None:
            dist.destroy_process_group(run.wait)


# -------------------------------------------------------------------------------------------------------- main
def main(argv):
    cfg = parse_config(argv)
    # torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a caller may have set the process group up already
    distributed = int(os.environ.get("RANK", -1)) != -1
    owns_group = distributed and not dist.is_initialized()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if owns_group:
        use_nccl = torch.cuda.is_available() and cfg.device != "cpu"
        if use_nccl:
            torch.cuda.set_device(local)  # this rank's GPU before the first collective (claim_out_dir's)
        dist.init_process_group("nccl" if use_nccl else "gloo")
    if cfg.fsdp and not distributed:
        raise SystemExit("--fsdp=True needs torchrun (e.g. torchrun --standalone --nproc_per_node=8 train.py ...)")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    try:
        claim_out_dir(cfg, rank)  # before any work: a new run never mixes with another's files
        if cfg.mode == "povid" and cfg.povid_stage1_steps > 0:
            # stage 1: DPO on the injected hallucinations, merged on export; it is both the start and the reference
            # of stage 2. A finished stage 1 (its model/ exists) is reused.
            s1 = replace(cfg, mode="dpo", max_steps=cfg.povid_stage1_steps, povid_stage1_steps=0,
                         out_dir=os.path.join(cfg.out_dir, "stage1"), stop_after=0)
            merged = os.path.join(s1.out_dir, "model")
            if not os.path.isfile(os.path.join(merged, "config.json")):  # else reused (claim_out_dir: resumed)
                train(s1, rank, world, local)
                gc.collect()  # stage 1's model, optimizer and images go before stage 2 loads its own
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            # the export holds the tower, except in MobileVLM v1's layout, which is read with its CLIP dir again
            tower = cfg.vision_tower if takes_vision_tower(merged) else ""
            cfg = replace(cfg, init_from=merged, vision_tower=tower, povid_stage1_steps=0)
        return train(cfg, rank, world, local)
    except D.DataError as e:  # the user's data: one line naming the file and line or item, no traceback
        raise SystemExit(str(e)) from None
    finally:
        if owns_group:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
