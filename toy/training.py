"""The toy demo's training stages: each one command line of the project's own trainers, as a user would type it.

    vision    python -m toy.pretrain_vision   the tiny LLaVA's vision tower taught to tag the training scenes' objects
                                              (stands in for the pretrained CLIP ViT LLaVA-1.5 starts from)
    sft       python train.py --mode=sft      the tiny LLaVA trained on captions + QA, the tower frozen (as LLaVA-1.5's),
                                              projector and decoder from scratch
    clip      python -m toy.train_clip        a tiny CLIP, contrastive, with rule-injected hard negatives
    dpo       python train.py --mode=dpo|povid|clip-dpo|sft   one LoRA run from a merged model (DPO_ARGS)

Every function takes the pipeline (toy/demo.py's Pipeline: its world, settings `p` and stage runner) and returns
the trained model's directory (llava-hf layout), or reuses it when it exists.
"""
from __future__ import annotations

import os

# --rpo_alpha=1: every DPO run also lowers the chosen answer's per-token NLL (RPO; dpo.py). Without it DPO lowered
# how readily every companion is named, drawn or not, and the cut cost recall and POPE F1 faster (README, "Why")
DPO_ARGS = ["--lora_rank=16", "--lora_alpha=32", "--lr=1.5e-4", "--beta=0.1", "--rpo_alpha=1", "--warmup_steps=10",
            "--log_every=25"]


def vision(pl):
    p, out = pl.p, pl.path("vision")
    pl.stage("vision", os.path.join(out, "metrics.json"), [[
        "toy/pretrain_vision.py", f"--annotations={pl.world}/annotations.json", f"--splits={pl.world}/splits.json",
        "--eval_split=val", f"--model_config={pl.world}/llava_config", f"--out_dir={out}",
        f"--steps={p['vision_steps']}", f"--seed={pl.seed}"]])
    return out


def sft(pl, init):
    p, out = pl.p, pl.path("sft")
    pl.stage("sft", os.path.join(out, "model", "model.safetensors"), [[
        "train.py", "--mode=sft", f"--data={pl.world}/sft.json", f"--init_from={init}",
        f"--tokenizer={pl.world}", f"--out_dir={out}", f"--max_steps={p['sft_steps']}",
        f"--batch_size={p['sft_batch']}", "--micro_batch_size=" + str(p["sft_batch"]), "--lr=2e-3",
        "--lora_rank=0", "--train_vision=False", f"--warmup_steps={min(50, p['sft_steps'] // 5)}",
        "--log_every=100", f"--seed={pl.seed}", "--template=llava_hf"]])
    return os.path.join(out, "model")


def clip(pl, negatives):
    """The tiny CLIP, in the background: it needs only the world and the rules pairs (the captions' wrong
    versions are its hard negatives), so it trains while the tower and the SFT run."""
    p, out = pl.p, pl.path("clip")
    pl.stage("clip", os.path.join(out, "model.safetensors"), [[
        "toy/train_clip.py", f"--data={pl.world}/train.json", f"--clip_config={pl.world}/clip_config",
        f"--out_dir={out}", f"--negatives={negatives}", f"--steps={p['clip_steps']}"]], background=True)
    return out


def dpo(pl, name, init, data, mode="dpo", extra=(), steps=None, background=False):
    p, out = pl.p, pl.path(name)
    pl.stage(name, os.path.join(out, "model", "model.safetensors"),
             [["train.py", f"--mode={mode}", f"--data={data}", f"--init_from={init}", f"--out_dir={out}",
               f"--max_steps={steps or p['dpo_steps']}", f"--batch_size={p['dpo_batch']}",
               f"--micro_batch_size={p['dpo_batch']}", "--template=llava_hf", *DPO_ARGS, *extra]],
             background=background)
    return os.path.join(out, "model")
