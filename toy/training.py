"""The toy demo's training stages: each one command line of the project's own trainers, as a user would type it.

    vision    python -m toy.pretrain_vision   the tiny LLaVA's vision tower taught to tag the training scenes' objects
                                              (stands in for the pretrained CLIP ViT LLaVA-1.5 starts from)
    sft       torchrun --nproc_per_node=2 train.py --mode=sft   the tiny LLaVA trained on captions + QA, the tower
                                              frozen (as LLaVA-1.5's), projector and decoder from scratch; DDP over
                                              the two cores (the same global batch of 32, 16 per rank)
    clip      python -m toy.train_clip        a tiny CLIP, contrastive, with rule-injected hard negatives
    dpo       python train.py --mode=dpo|povid|clip-dpo|sft   one LoRA run (DPO_ARGS) that also saves its merged
                                              model every `export_every` steps (--export_every), for the selection

Every function takes the pipeline (toy/demo.py's Pipeline: its world, settings `p` and stage runner), declares its
stage and returns its Output (toy/runner.py): the trained model's directory (llava-hf layout) and the stage's name.
"""
from __future__ import annotations

import os

from toy.runner import Output

# --rpo_alpha=1: every DPO run also lowers the chosen answer's per-token NLL (RPO; dpo.py). Without it DPO lowered
# how readily every companion is named, drawn or not, and the cut cost recall and POPE F1 faster (docs/toy.md)
DPO_ARGS = ["--lora_rank=16", "--lora_alpha=32", "--lr=1.5e-4", "--beta=0.1", "--rpo_alpha=1", "--warmup_steps=10",
            "--log_every=25"]
# what the toy relies on and train.py's defaults could change under it (they are set for the real LLaVA-1.5 runs)
PINNED = ["--template=llava_hf", "--max_len=512"]


def vision(pl, world: Output) -> Output:
    p, out = pl.p, pl.path("vision")
    pl.stage("vision", os.path.join(out, "metrics.json"), [[
        "toy/pretrain_vision.py", f"--annotations={pl.world}/annotations.json", f"--splits={pl.world}/splits.json",
        "--eval_split=val", f"--model_config={pl.world}/llava_config", f"--out_dir={out}",
        f"--steps={p['vision_steps']}", f"--seed={pl.seed}"]], needs=[world.stage])
    return Output(out, "vision")


def sft(pl, world: Output, init: Output) -> Output:
    """The SFT over both cores: nothing else can run before it ends (every later stage starts from its model), and
    train.py's DDP splits each global batch between the ranks with the loss normalised by the global count of answer
    tokens, so two ranks of 16 take the step one process of 32 would (up to float summation order)."""
    p, out = pl.p, pl.path("sft")
    pl.stage("sft", os.path.join(out, "model", "model.safetensors"), [[
        "train.py", "--mode=sft", f"--data={pl.world}/sft.json", f"--init_from={init.path}",
        f"--tokenizer={pl.world}", f"--out_dir={out}", f"--max_steps={p['sft_steps']}",
        f"--batch_size={p['sft_batch']}", f"--micro_batch_size={p['sft_batch'] // 2}", "--lr=2e-3",
        "--lora_rank=0", "--train_vision=False", f"--warmup_steps={min(50, p['sft_steps'] // 5)}",
        "--log_every=100", f"--seed={pl.seed}", "--resume=True", *PINNED]], needs=[world.stage, init.stage], cores=2,
        ddp=True)
    return Output(os.path.join(out, "model"), "sft")


def clip(pl, world: Output, negatives: Output) -> Output:
    """The tiny CLIP: it needs only the world and the rules' false captions (its hard negatives)."""
    p, out = pl.p, pl.path("clip")
    pl.stage("clip", os.path.join(out, "model.safetensors"), [[
        "toy/train_clip.py", f"--data={pl.world}/train.json", f"--clip_config={pl.world}/clip_config",
        f"--out_dir={out}", f"--negatives={negatives.path}", f"--steps={p['clip_steps']}"]],
        needs=[world.stage, negatives.stage])
    return Output(out, "clip")


def dpo(pl, name, init: Output, data: Output, mode="dpo", extra=(), steps=None) -> Output:
    """One LoRA run from `init` on `data` -> its final merged model; the exports along the way: checkpoints()."""
    p, out = pl.p, pl.path(name)
    # --mode=sft reads no preference setting (train.py refuses one); --resume=True: a stage killed half-way goes on
    args = [a for a in DPO_ARGS if not a.startswith(("--beta=", "--rpo_alpha="))] if mode == "sft" else DPO_ARGS
    pl.stage(name, os.path.join(out, "model", "model.safetensors"),
             [["train.py", f"--mode={mode}", f"--data={data.path}", f"--init_from={init.path}", f"--out_dir={out}",
               f"--max_steps={steps}", f"--batch_size={p['dpo_batch']}", f"--micro_batch_size={p['dpo_batch']}",
               f"--export_every={p['export_every']}", "--resume=True", *PINNED, *args, *extra]],
             needs=[init.stage, data.stage])
    return Output(os.path.join(out, "model"), name)


def checkpoints(pl, run: Output, steps: int, start: int = 0) -> list[tuple[int, Output]]:
    """The models a run saved along its `steps`: [(step counted from `start`, Output)], every export_every steps
    (train.py writes out_dir/exports/step_NNNNNN/), the last one its model/."""
    every, out = pl.p["export_every"], os.path.dirname(run.path)
    return [(start + s, Output(os.path.join(out, "exports", f"step_{s:06d}"), run.stage))
            for s in range(every, steps, every)] + [(start + steps, run)]
