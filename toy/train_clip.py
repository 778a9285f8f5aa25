"""Contrastive training of a (tiny) CLIP on image-caption pairs: the scorer CLIP-DPO needs in the toy world.

CLIP-DPO (Ouali et al. 2024) ranks a model's own answers with an off-the-shelf CLIP. The toy world has no such
CLIP, so we train one with the symmetric InfoNCE loss of Radford et al. (2021), eq. in their Fig. 3:

    logits = exp(t) * normalize(f_img) @ normalize(f_txt).T          (B, B)
    loss   = (CE(logits, arange(B)) + CE(logits.T, arange(B))) / 2

In-batch negatives only teach "which scene is this"; a scorer for hallucination must also notice a single
absent object. So each image may carry hard-negative captions (NegCLIP, Yuksekgonul et al. 2023): the
`rejected` side of a preference file, e.g. `hallucinate.py rules` output, which inserts an absent object or
swaps an attribute. They join the text side of the batch as extra columns that match no image. Only pairs whose
prompt contains `caption_prompt` give negatives (a QA turn's wrong answer, "Yes.", is not a caption), and not those
whose category is "omission" (a caption that leaves an object out is still true of the image); the others are
counted and skipped.

    python -m toy.train_clip --data world/train.json --clip_config world/clip_config --out_dir out/clip \
        [--negatives pairs.jsonl] [--steps 600 --batch_size 128 --lr 1e-3]

Data: LLaVA conversation JSON; the pair is (image, first answer) of every item whose first human turn contains
`caption_prompt` (case-insensitive). The trained model is written with `CLIPModel.save_pretrained` (openai CLIP
key layout) next to the tokenizer.json it was trained with.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from model import CLIPConfig, CLIPModel, Tokenizer, load_image
from model.clip import init_weights


@dataclass
class Config:
    data: str = ""  # LLaVA conversation JSON
    clip_config: str = ""  # dir with config.json (+ tokenizer.json) of the CLIP to train from scratch
    out_dir: str = "out/clip"
    negatives: str = ""  # optional preference JSONL whose `rejected` captions are hard negatives
    caption_prompt: str = "describe"
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    seed: int = 0
    log_every: int = 50


def parse_args(argv, cfg=None):
    """--key=value arguments into a config dataclass (this script's Config by default), each value cast to the
    field's type; unknown keys are an error that lists the known ones."""
    cfg = Config() if cfg is None else cfg
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"arguments are --key=value, got {arg!r}")
        key, val = arg[2:].split("=", 1)
        if not hasattr(cfg, key):
            raise SystemExit(f"unknown config key {key!r}; known: {', '.join(asdict(cfg))}")
        setattr(cfg, key, type(getattr(cfg, key))(val))
    return cfg


def text_ids(tok: Tokenizer, text: str, max_len: int):
    """<s> words </s>, truncated so the pooling token (</s>) always survives."""
    ids = tok.encode(text)[: max_len - 2]
    return [tok.bos_id] + ids + [tok.eos_id]


def pad(rows, pad_id):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask


def load_pairs(cfg: Config):
    with open(cfg.data) as f:
        items = json.load(f)
    root = os.path.dirname(os.path.abspath(cfg.data))
    pairs, skipped = [], 0
    for i, it in enumerate(items):
        conv = it.get("conversations") or []
        if len(conv) < 2 or "image" not in it:
            raise ValueError(f"{cfg.data}: item {i} has no image or fewer than two turns")
        if cfg.caption_prompt.lower() not in conv[0]["value"].lower():
            skipped += 1  # a QA item, not a caption
            continue
        pairs.append((os.path.join(root, it["image"]), conv[1]["value"]))
    negs, skipped_negs, skipped_omit = {}, 0, 0
    if cfg.negatives:
        nroot = os.path.dirname(os.path.abspath(cfg.negatives))
        with open(cfg.negatives) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{cfg.negatives}:{n}: malformed JSON ({e})") from None
                    if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in
                                                            ("image", "prompt", "rejected")):
                        raise ValueError(f"{cfg.negatives}:{n}: a pair needs string 'image', 'prompt' and 'rejected'")
                    if cfg.caption_prompt.lower() not in row["prompt"].lower():
                        skipped_negs += 1  # a QA turn's wrong answer ("Yes."), not a caption
                        continue
                    if row.get("category") == "omission":
                        skipped_omit += 1  # a caption that leaves an object out is still true of the image
                        continue
                    negs.setdefault(os.path.normpath(os.path.join(nroot, row["image"])), []).append(row["rejected"])
    print(f"clip data: {len(pairs)} caption pairs ({skipped} non-caption items skipped), "
          f"{sum(map(len, negs.values()))} hard negatives for {len(negs)} images ({skipped_negs} non-caption "
          f"pairs and {skipped_omit} omissions skipped)")
    return pairs, negs


def main(argv):
    cfg = parse_args(argv)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    ccfg = CLIPConfig.from_dir(cfg.clip_config)
    tok = Tokenizer.from_pretrained(cfg.clip_config)
    model = CLIPModel(ccfg)
    init_weights(model)
    pairs, negs = load_pairs(cfg)
    if len(pairs) < cfg.batch_size:
        raise SystemExit(f"{cfg.data}: {len(pairs)} caption pairs, fewer than batch_size={cfg.batch_size}")
    size, maxlen = ccfg.vision.image_size, ccfg.text.max_position_embeddings
    t0 = time.time()
    pixels = torch.stack([load_image(p, size, pad=True) for p, _ in pairs])  # (N, 3, S, S), loaded once
    texts = [text_ids(tok, c, maxlen) for _, c in pairs]
    neg_texts = [[text_ids(tok, c, maxlen) for c in negs.get(os.path.normpath(p), [])] for p, _ in pairs]
    print(f"loaded {len(pairs)} images in {time.time() - t0:.1f}s")

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warmup, cosine decay
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    order, pos = list(range(len(pairs))), len(pairs)
    model.train()
    t0, losses = time.time(), []
    for step in range(cfg.steps):
        if pos + cfg.batch_size > len(order):
            rng.shuffle(order)
            pos = 0
        idx, pos = order[pos: pos + cfg.batch_size], pos + cfg.batch_size
        extra = [rng.choice(neg_texts[i]) for i in idx if neg_texts[i]]  # one hard negative per image
        ids, mask = pad([texts[i] for i in idx] + extra, tok.pad_id)
        img = F.normalize(model.encode_image(pixels[idx]), dim=-1)  # (B, P)
        txt = F.normalize(model.encode_text(ids, mask), dim=-1)  # (B + E, P)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.t()  # (B, B + E)
        target = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(idx)].t(), target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            acc = (logits.argmax(-1) == target).float().mean().item()
            print(f"clip step {step}/{cfg.steps} loss {loss.item():.4f} img->txt acc {acc:.3f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    os.makedirs(cfg.out_dir, exist_ok=True)
    model.save_pretrained(cfg.out_dir)
    shutil.copy(os.path.join(cfg.clip_config, "tokenizer.json"), os.path.join(cfg.out_dir, "tokenizer.json"))
    with open(os.path.join(cfg.out_dir, "train_config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=2)
    return losses


if __name__ == "__main__":
    main(sys.argv[1:])
