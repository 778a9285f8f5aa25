"""What a training run keeps on disk (train.py): checkpoints for an exact resume, and the exported model.

    ckpt/    trainable.safetensors (full tensors, also under FSDP) + optimizer.pt + rng_rank{r}.pt + state.json
             (step = data position) + config.json, written into ckpt.tmp/ and swapped in by renames, so a crash at any
             moment leaves the previous checkpoint whole;
    model/   the final model, LoRA adapters merged, in the llava-hf layout + tokenizer.json (transformers loads it);
    refcache-KEY.pt  the reference log-probs of every pair (--ref_cache=True).

On CPU a run killed after any checkpoint and resumed with --resume=True ends with weights identical to an
uninterrupted run (tests/test_train.py): the RNG states and the data position are part of the checkpoint.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
from dataclasses import asdict

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from model import Llava
from model.checkpoint import read_llava_state, stored_dtype
from model.files import atomic_path, fsync, read_json, sync_tree, write_json
from model.hf_files import write_hf_files
from model.lora import merge_lora_state
from model.tokenizer import DEFAULT_TEMPLATE


def _rng_state():
    s = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state()
    return s


def save_checkpoint(cfg, net, model, opt, step, rank):
    """ckpt/ = trainable.safetensors (full tensors) + optimizer.pt + rng_rank{r}.pt + state.json + config.json,
    written into ckpt.tmp/ and swapped in by renames: a crash at any moment leaves the previous checkpoint whole,
    as ckpt/ or (between the two renames) ckpt.prev/."""
    final, tmp, prev = (os.path.join(cfg.out_dir, n) for n in ("ckpt", "ckpt.tmp", "ckpt.prev"))
    ddp = dist.is_initialized()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    if ddp:
        dist.barrier()
    if cfg.fsdp:  # collectives: every rank takes part, rank 0 receives the full tensors
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        trainable = {n: p.full_tensor().cpu() for n, p in model.named_parameters() if p.requires_grad}
        optim = get_optimizer_state_dict(net, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        optim = opt.state_dict()
    torch.save(_rng_state(), os.path.join(tmp, f"rng_rank{rank}.pt"))  # dropout draws differ per rank
    if rank == 0:
        save_file({n: t.contiguous() for n, t in trainable.items()}, os.path.join(tmp, "trainable.safetensors"))
        torch.save(optim, os.path.join(tmp, "optimizer.pt"))
        write_json(os.path.join(tmp, "state.json"), {"step": step, "data": cfg.data})
        write_json(os.path.join(tmp, "config.json"), asdict(cfg))
    if ddp:
        dist.barrier()
    if rank == 0:
        sync_tree(tmp)  # on the disk before the swap: a power loss, not only a kill, leaves one checkpoint whole
        if os.path.exists(final):
            shutil.rmtree(prev, ignore_errors=True)
            os.replace(final, prev)
        os.replace(tmp, final)
        fsync(cfg.out_dir)
        shutil.rmtree(prev, ignore_errors=True)
    if ddp:
        dist.barrier()


def load_checkpoint(cfg, net, model, opt, rank) -> int:
    """Restore a checkpoint written by save_checkpoint; returns its step (0 when there is none)."""
    for name in ("ckpt", "ckpt.prev"):  # ckpt.prev: a crash between the two renames
        d = os.path.join(cfg.out_dir, name)
        if os.path.isfile(os.path.join(d, "state.json")):
            break
    else:
        return 0
    saved = load_file(os.path.join(d, "trainable.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if saved.keys() != params.keys():
        missing, extra = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
        raise SystemExit(f"{d}: trainable parameters differ from this run's (config changed?): "
                         f"missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for n, p in params.items():
            t = saved[n].to(p.device, p.dtype)
            if hasattr(p, "device_mesh"):  # an FSDP shard: keep this rank's slice of the full tensor
                from torch.distributed.tensor import distribute_tensor
                t = distribute_tensor(t, p.device_mesh, p.placements)
            p.copy_(t)
    if cfg.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        osd = torch.load(os.path.join(d, "optimizer.pt"), weights_only=True) if rank == 0 else {}
        set_optimizer_state_dict(net, opt, osd, options=StateDictOptions(full_state_dict=True,
                                                                         broadcast_from_rank0=True))
    else:
        opt.load_state_dict(torch.load(os.path.join(d, "optimizer.pt"), weights_only=True))
    rng_path = os.path.join(d, f"rng_rank{rank}.pt")
    if os.path.isfile(rng_path):
        rng = torch.load(rng_path, weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    else:
        print(f"rank {rank}: {rng_path} missing (world size changed?): dropout draws will not repeat exactly")
    return read_json(os.path.join(d, "state.json"))["step"]


def export_model(cfg, net, model, tok, rank, path=None, template=None):
    """The model, adapters merged, into `path` (default out_dir/model, the final model) as a directory that
    transformers (AutoProcessor + LlavaForConditionalGeneration) and vLLM load: config.json, safetensors in the
    llava-hf layout, and the side files of model/hf_files.py (tokenizer, image processor, processor, chat template,
    generation config), copied from the tokenizer / base checkpoint directories where they have them, written
    otherwise (chat template: `template`, default cfg.template).

    Precision: the file keeps the base checkpoint's dtype (its config's torch_dtype, else its tensors'; fp16 for
    LLaVA-1.5), not the dtype training held the frozen weights in. The frozen weights are re-read from the base
    checkpoint as stored (a bf16 copy made for training would round an fp16 base), each LoRA delta B A is added in
    fp32, and every tensor is rounded once into the file's dtype. Without a base (from scratch) the weights keep
    their training dtype."""
    if cfg.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        state = {k.removeprefix("llava."): v for k, v in state.items()}
    else:
        state = model.state_dict()  # references, no copy
    if rank != 0:
        return None
    base = cfg.init_from or None
    dtype = stored_dtype(base) if base else None
    if base:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state = _frozen_from_base(state, trainable, base, dtype)
    if cfg.lora_rank:
        state = merge_lora_state(state, cfg.lora_alpha / cfg.lora_rank)  # (W.float() + scale B A) -> W's dtype
    dtype = dtype or state["language_model.embed_tokens.weight"].dtype
    with torch.device("meta"):
        out = Llava(model.config)  # no memory, no init: the tensors are assigned below
    out.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)  # strict: every key matches
    path = path or os.path.join(cfg.out_dir, "model")
    out.save_pretrained(path)
    write_hf_files(path, model.config, tok, template=template or getattr(cfg, "template", DEFAULT_TEMPLATE),
                   tokenizer_dir=cfg.tokenizer or cfg.init_from or getattr(cfg, "model_config", "") or None,
                   base_dir=base)
    return path


def _frozen_from_base(state, trainable, base, dtype):
    """`state` with every frozen tensor replaced by the base checkpoint's stored one (the trained ones and the
    adapters kept). A frozen tensor must match its stored value to the training dtype's rounding, else the model
    was not built from `base` and the export refuses (naming the key)."""
    disk = read_llava_state(base)
    out = {}
    for k, v in state.items():
        plain = k.replace(".base.weight", ".weight").replace(".base.bias", ".bias")  # LoRA-wrapped linears
        if k in trainable or k.endswith((".lora_A", ".lora_B")):
            out[k] = v
            continue
        if plain not in disk or tuple(disk[plain].shape) != tuple(v.shape):
            raise ValueError(f"export: {plain!r} of the trained model is not in the base checkpoint {base} with "
                             f"shape {tuple(v.shape)}")
        d = disk.pop(plain)
        scale = float(d.abs().max()) if d.numel() else 0.0
        if d.numel() and float((v.detach().float().cpu() - d.float()).abs().max()) > 1e-2 * scale + 1e-6:
            raise ValueError(f"export: frozen {plain!r} differs from the base checkpoint {base}: was the model "
                             "loaded from it?")
        # a LoRA base weight keeps the stored dtype only if that is the file's: the merge then rounds once into it
        out[k] = d if d.dtype == dtype else d.float()
    return out


def reference_cache(cfg, rows, ref_pair_logps, collate, images, tok, device, autocast, rank, world, dtype, print0):
    """Reference log-probs of every pair, (N, 2) = (chosen, rejected), computed once (the reference never changes
    within a stage) and stored as out_dir/refcache-KEY.pt, KEY a hash of the data file, the reference checkpoint and
    everything else that changes the numbers. Ranks split the pairs and gather the result. `ref_pair_logps(batch)`
    -> (chosen (P,), rejected (P,)), called under no_grad in the reference's context by the caller."""
    key = hashlib.sha256()
    with open(cfg.data, "rb") as f:
        key.update(f.read())
    for k in ("init_from", "vision_tower", "model_config", "template", "max_len", "on_bad_sample", "image_root",
              "image_aspect_ratio", "fused_loss"):  # fused_loss: which kernel scores (float rounding)
        key.update(f"{k}={getattr(cfg, k)};".encode())
    # bf16 and fp32 references give different numbers
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
        b = collate([rows[i] for i in idx], tok.pad_id, images)
        b = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}
        with torch.no_grad(), autocast:
            rc, rr = ref_pair_logps(b)
        out.update({i: (c, r) for i, c, r in zip(idx, rc.tolist(), rr.tolist())})
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, out)
        out = {i: v for part in parts for i, v in part.items()}
    logps = torch.tensor([out[i] for i in range(len(rows))], dtype=torch.float32)  # (N, 2)
    if rank == 0:
        with atomic_path(path) as tmp:
            torch.save(logps, tmp)
        print0(f"reference log-probs of {len(rows)} pairs cached in {path}")
    return logps
