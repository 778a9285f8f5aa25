"""The toy LLaVA's eyes: its vision tower pretrained to tag the objects in the training scenes, before SFT.

LLaVA-1.5 does not learn to see from its instruction data: it takes a CLIP ViT pretrained on 400M image-text pairs
and keeps it frozen through both of its training stages (Liu et al. 2023, Sec. 3), so its tower already knows a
fork from a table. The toy world has no such tower. Trained from scratch through the caption loss alone, the tiny
tower learns the scene type and little else: a probe on its image tokens tells a drawn companion from an absent one
with AUC 0.71 (README, "A pretrained, frozen vision tower"), so the model can only caption from the scene type's
prior. This stage stands in for CLIP's pretraining: the same tower (the blocks LLaVA reads, CLS dropped) is trained
to say which of the world's categories each training image holds, a multi-label logistic loss on the mean and max of
its patch tokens:

    h      = tower(image)[:, 1:]                          (B, P, Dv)   blocks up to LLaVA's feature layer
    logits = W [mean_p h ; max_p h] + b                   (B, C)       C = the categories in the annotations
    loss   = BCE(logits, present)                         present[b, c] = 1 iff category c is drawn in image b

The head is thrown away; the output is a llava-hf checkpoint whose tower holds the trained weights and whose
projector and decoder are a seeded random init, for `train.py --mode=sft --init_from=DIR --train_vision=False`.

    python -m toy.pretrain_vision --annotations=world/annotations.json --splits=world/splits.json \
        --model_config=world/llava_config --out_dir=out/vision [--steps=3000 --batch_size=32 --lr=1e-3]

Annotations: {id: {"image": path relative to the annotations file, "objects": [category, ...]}} (toy/world.py's
format); the training ids are `splits[train_split]`, and, when `eval_split` names a split, the trained tower's
per-category AUC (present vs absent) on it is printed and written to metrics.json.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from toy import train_clip
from model import Llava, LlavaConfig, load_image
from model.files import write_atomic


@dataclass
class Config:
    annotations: str = ""  # {id: {"image", "objects"}}
    splits: str = ""  # {split: [id, ...]}
    train_split: str = "train"
    eval_split: str = ""  # e.g. "val": report the tower's tagging AUC there
    model_config: str = ""  # dir with config.json (+ tokenizer.json) of the LLaVA to initialise
    out_dir: str = "out/vision"
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    log_every: int = 500


def parse_args(argv) -> Config:
    cfg = train_clip.parse_args(argv, Config())  # the same --key=value parser
    for key in ("annotations", "splits", "model_config"):
        if not getattr(cfg, key):
            raise SystemExit(f"--{key} is required")
    return cfg


def load_split(cfg: Config, split: str, size: int, categories=None):
    """(pixels (N, 3, S, S), present (N, C) in {0, 1}, ids, categories). The categories are those of the whole
    annotations file, sorted, so every split shares one column order."""
    with open(cfg.annotations) as f:
        ann = json.load(f)
    with open(cfg.splits) as f:
        splits = json.load(f)
    if split not in splits:
        raise SystemExit(f"{cfg.splits}: no split {split!r} (has {', '.join(splits)})")
    ids = splits[split]
    root = os.path.dirname(os.path.abspath(cfg.annotations))
    for i in ids:
        a = ann.get(i)
        if a is None or "image" not in a or "objects" not in a:
            raise SystemExit(f"{cfg.annotations}: id {i!r} (split {split!r} of {cfg.splits}) is missing or has no "
                             "'image' / 'objects'")
    categories = categories or sorted({c for a in ann.values() for c in a.get("objects", [])})
    col = {c: j for j, c in enumerate(categories)}
    present = torch.zeros(len(ids), len(categories))
    for n, i in enumerate(ids):
        for c in ann[i]["objects"]:
            present[n, col[c]] = 1
    pixels = torch.stack([load_image(os.path.join(root, ann[i]["image"]), size) for i in ids])  # loaded once
    return pixels, present, ids, categories


def pooled(tower, layers: int, pixels):
    """(B, 3, S, S) -> (B, 2 Dv): mean and max over the patch tokens LLaVA reads."""
    h = tower(pixels, num_layers=layers)[:, 1:]  # (B, P, Dv), CLS dropped as LLaVA drops it
    return torch.cat([h.mean(1), h.amax(1)], -1)


def auc(scores, labels) -> float:
    """P(score of a present image > score of an absent one), ties counted half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return ((pos[:, None] > neg[None]).float().mean() + 0.5 * (pos[:, None] == neg[None]).float().mean()).item()


def main(argv):
    cfg = parse_args(argv)
    torch.manual_seed(cfg.seed)
    mc = LlavaConfig.from_dir(cfg.model_config)
    model = Llava(mc)  # seeded random init; only the tower is trained here
    tower, layers = model.vision_tower, mc.vision_layers_used
    t0 = time.time()
    pixels, present, ids, categories = load_split(cfg, cfg.train_split, mc.vision.image_size)
    print(f"vision pretraining: {len(ids)} images, {len(categories)} categories, loaded in {time.time() - t0:.1f}s")
    head = torch.nn.Linear(2 * mc.vision.hidden_size, len(categories))
    for m in [*tower.layers[layers:], tower.post_layernorm]:  # blocks past LLaVA's feature layer never run
        m.requires_grad_(False)
    params = [p for p in tower.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, t0 = [], time.time()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(ids), (cfg.batch_size,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(head(pooled(tower, layers, pixels[idx])), present[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            print(f"vision step {step}/{cfg.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    metrics = {"final_loss": losses[-1]}
    if cfg.eval_split:
        epix, epresent, _, _ = load_split(cfg, cfg.eval_split, mc.vision.image_size, categories)
        with torch.no_grad():
            scores = torch.cat([head(pooled(tower, layers, epix[i:i + 256])) for i in range(0, len(epix), 256)])
        per = {c: auc(scores[:, j], epresent[:, j]) for j, c in enumerate(categories)}
        metrics["auc"] = per
        known = [v for v in per.values() if v == v]
        metrics["mean_auc"] = sum(known) / len(known)
        print(f"vision tagging AUC on {cfg.eval_split!r} (present vs absent, mean over categories): "
              f"{metrics['mean_auc']:.3f}")
    model.save_pretrained(cfg.out_dir)
    shutil.copy(os.path.join(cfg.model_config, "tokenizer.json"), os.path.join(cfg.out_dir, "tokenizer.json"))
    # metrics.json last: it marks a finished run (toy/demo.py reuses the stage by it)
    for name, obj in (("train_config.json", asdict(cfg)), ("metrics.json", metrics)):
        write_atomic(os.path.join(cfg.out_dir, name), json.dumps(obj, indent=2))
    return losses


if __name__ == "__main__":
    main(sys.argv[1:])
