"""What a training run keeps on disk (train.py): checkpoints for an exact resume, and the exported model.

    ckpt/    trainable.safetensors (full tensors, also under FSDP) + optimizer.pt + rng_rank{r}.pt + state.json
             (step = data position) + config.json, written into ckpt.tmp/ and swapped in by renames, so a crash at any
             moment leaves the previous checkpoint whole;
    model/   the final model, LoRA adapters merged, in the llava-hf layout + tokenizer.json (transformers loads it);
    refcache-KEY.pt  the reference log-probs of every pair (--ref_cache=True).

On CPU a run killed after any checkpoint and resumed with --resume=True ends with weights identical to an
uninterrupted run (tests/test_train.py): the RNG states and the data position are part of the checkpoint. A resume
is of the same run or refused (same_run: the settings and the usable samples' digest, naming what differs); a new
run never writes into another's out_dir (claim_out_dir: --overwrite=True replaces it); metrics_until drops what a
killed run logged after its checkpoint. Under torchrun the other ranks wait for rank 0's writes in a group of their
own (long_wait_group), not against the default group's collective timeout.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import asdict
from datetime import timedelta

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from model import Llava
from model.checkpoint import read_llava_state, stored_dtype, takes_vision_tower
from model.files import atomic_path, fingerprint, fsync, read_json, sync_tree, write_json
from model.hf_files import write_hf_files
from model.lora import merge_lora_state
from model.tokenizer import DEFAULT_TEMPLATE


def _rng_state():
    s = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state()
    return s


def long_wait_group():
    """A gloo group whose barrier the other ranks wait in while rank 0 writes a checkpoint or merges and exports a
    model (minutes on a 7B): it has a 24-hour timeout, where a collective of the default group gives up after 10
    (NCCL) or 30 (gloo) minutes. Every rank makes it at the same point: Run's start."""
    return dist.new_group(backend="gloo", timeout=timedelta(hours=24)) if dist.is_initialized() else None


def save_checkpoint(cfg, net, model, opt, step, rank, wait=None, data_id=None):
    """ckpt/ = trainable.safetensors (full tensors) + optimizer.pt + rng_rank{r}.pt + state.json + config.json,
    written into ckpt.tmp/ and swapped in by renames: a crash at any moment leaves the previous checkpoint whole,
    as ckpt/ or (between the two renames) ckpt.prev/. The ranks wait for rank 0's writes on `wait`
    (long_wait_group). state.json keeps `data_id` (the usable samples' count and digest) for the resume's check."""
    final, tmp, prev = (os.path.join(cfg.out_dir, n) for n in ("ckpt", "ckpt.tmp", "ckpt.prev"))
    ddp = dist.is_initialized()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    if ddp:
        dist.barrier(group=wait)
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
        write_json(os.path.join(tmp, "state.json"), {"step": step, "data": cfg.data, **(data_id or {})})
        write_json(os.path.join(tmp, "config.json"), asdict(cfg))
    if ddp:
        dist.barrier(group=wait)
    if rank == 0:
        sync_tree(tmp)  # on the disk before the swap: a power loss, not only a kill, leaves one checkpoint whole
        if os.path.exists(final):
            shutil.rmtree(prev, ignore_errors=True)
            os.replace(final, prev)
        os.replace(tmp, final)
        fsync(cfg.out_dir)
        shutil.rmtree(prev, ignore_errors=True)
    if ddp:
        dist.barrier(group=wait)


def load_checkpoint(cfg, net, model, opt, rank, data_id=None) -> int:
    """Restore a checkpoint written by save_checkpoint; returns its step (0 when there is none). A run with other
    settings or other usable samples (`data_id`) than the checkpoint's is refused, naming what differs."""
    for name in ("ckpt", "ckpt.prev"):  # ckpt.prev: a crash between the two renames
        d = os.path.join(cfg.out_dir, name)
        if os.path.isfile(os.path.join(d, "state.json")):
            break
    else:
        return 0
    same_run(cfg, d, data_id or {})
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


RUN_FILES = ("config.json", "metrics.jsonl", "ckpt", "ckpt.prev", "ckpt.tmp", "model", "exports", "stage1")
# what a resume may change: where things go, how often they are logged or saved, what a test stops at, the device
RESUME_MAY_DIFFER = {"resume", "overwrite", "out_dir", "data", "ref_cache_dir", "stop_after", "log_every", "save_every",
                     "export_every", "image_cache_mb", "peak_tflops", "device", "fsdp", "grad_checkpointing"}


def claim_out_dir(cfg, rank: int):
    """A new run (no --resume=True) must not mix with another's files: an out_dir that holds a run is refused, unless
    --overwrite=True, which removes that run's files first (a reference cache stays: its name is its content's
    hash). Decided by rank 0 for every rank."""
    found = [n for n in RUN_FILES if os.path.exists(os.path.join(cfg.out_dir, n))] if rank == 0 else None
    if dist.is_initialized():
        box = [found]
        dist.broadcast_object_list(box, src=0)
        found = box[0]
    if not found or cfg.resume:
        return
    if not cfg.overwrite:
        raise SystemExit(f"{cfg.out_dir} holds a run ({', '.join(found)}): --resume=True continues it, "
                         "--overwrite=True replaces it; or give another --out_dir")
    if rank == 0:
        for name in found:
            path = os.path.join(cfg.out_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if dist.is_initialized():
        dist.barrier()


def same_run(cfg, ckpt_dir: str, data_id: dict):
    """--resume=True continues the checkpoint's run or nothing: every setting but RESUME_MAY_DIFFER as saved (a key
    the checkpoint predates passes), and the same usable samples (count and digest, in order)."""
    saved, state = (read_json(os.path.join(ckpt_dir, n)) for n in ("config.json", "state.json"))
    now = asdict(cfg)
    diff = [f"--{k} {saved[k]!r} -> {v!r}" for k, v in now.items()
            if k not in RESUME_MAY_DIFFER and k in saved and saved[k] != v]
    if any(k in state and state[k] != v for k, v in data_id.items()):
        diff.append(f"the data: {state.get('samples')} usable samples (digest {state.get('samples_digest')}) -> "
                    f"{data_id.get('samples')} ({data_id.get('samples_digest')}) from {cfg.data}")
    if diff:
        raise SystemExit(f"{ckpt_dir}: --resume=True with other settings than the checkpoint's: {'; '.join(diff)} "
                         "(resume with the same ones, or start afresh with --overwrite=True)")


def metrics_until(path: str, step: int) -> str:
    """The lines of metrics.jsonl logged up to `step` (a killed run's lines after its checkpoint are dropped). A last
    line without its newline was torn by the kill: dropped, with a note naming the file; a malformed line before it
    is an error naming the file and line."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    kept = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if n == len(lines) and not line.endswith("\n"):
            print(f"{path}:{n}: dropped the last line, torn when the run was killed")
            break
        try:
            rec = json.loads(line)
            last = rec["step"]
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise SystemExit(f"{path}:{n}: not a metrics line ({e}); fix or remove it to resume") from None
        if last <= step:
            kept.append(line)
    return "".join(kept)


def export_model(cfg, net, model, tok, rank, path=None, template=None, wait=None):
    """The model, adapters merged, into `path` (default out_dir/model, the final model) as a directory that
    transformers (AutoProcessor + LlavaForConditionalGeneration) and vLLM load: config.json, safetensors in the
    llava-hf layout, and the side files of model/hf_files.py (tokenizer, image processor, processor, chat template,
    generation config), copied from the tokenizer / base checkpoint directories where they have them, written
    otherwise (chat template: `template`, default cfg.template).

    Precision: the file keeps the base checkpoint's dtype (its config's torch_dtype, else its tensors'; fp16 for
    LLaVA-1.5), not the dtype training held the frozen weights in. The frozen weights are re-read from the base
    checkpoint as stored (a bf16 copy made for training would round an fp16 base), each LoRA delta B A is added in
    fp32, and every tensor is rounded once into the file's dtype. Without a base (from scratch) the weights keep
    their training dtype. Under torchrun every rank calls it and, after rank 0 wrote the model, leaves through a
    barrier on `wait` (long_wait_group: a 7B merge outlasts the default group's timeout); rank 0 returns the path."""
    if cfg.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        state = {k.removeprefix("llava."): v for k, v in state.items()}
    else:
        state = model.state_dict()  # references, no copy
    if rank == 0:
        path = _write_export(cfg, state, model, tok, path or os.path.join(cfg.out_dir, "model"), template)
    if dist.is_initialized():
        dist.barrier(group=wait)  # the others wait for the files (stage 2 of a POVID run reads them next)
    return path if rank == 0 else None


def _write_export(cfg, state, model, tok, path, template):
    base = cfg.init_from or None
    dtype = stored_dtype(base) if base else None
    if base:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        tower = getattr(cfg, "vision_tower", "") if takes_vision_tower(base) else ""  # liuhaotian, MobileVLM v1
        state = _frozen_from_base(state, trainable, base, dtype, tower or None)
    if cfg.lora_rank:
        state = merge_lora_state(state, cfg.lora_alpha / cfg.lora_rank)  # (W.float() + scale B A) -> W's dtype
    dtype = dtype or state["language_model.embed_tokens.weight"].dtype
    with torch.device("meta"):
        out = Llava(model.config)  # no memory, no init: the tensors are assigned below
    out.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)  # strict: every key matches
    out.save_pretrained(path)
    write_hf_files(path, model.config, tok, template=template or getattr(cfg, "template", DEFAULT_TEMPLATE),
                   tokenizer_dir=cfg.tokenizer or cfg.init_from or getattr(cfg, "model_config", "") or None,
                   base_dir=base)
    return path


def _frozen_from_base(state, trainable, base, dtype, vision_tower=None):
    """`state` with every frozen tensor replaced by the base checkpoint's stored one (the trained ones and the
    adapters kept). A frozen tensor must match its stored value to the training dtype's rounding, else the model
    was not built from `base` and the export refuses (naming the key). `vision_tower`: the CLIP dir a liuhaotian or
    MobileVLM v1 base is read with."""
    disk = read_llava_state(base, vision_tower)
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
    key.update(fingerprint(cfg.init_from or cfg.model_config).encode())  # the checkpoint's identity, 2 MiB a file
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
