"""Datasets and collation for SFT (LLaVA conversation JSON) and DPO (preference pairs), with strict input checks.

Formats (image paths relative to the data file's directory unless absolute):
  * SFT: a JSON list of {"id", "image", "conversations": [{"from": "human"|"gpt", "value"}, ...]}.
  * Preferences, TRL-style JSONL (what hallucinate.py writes): {"id", "image" | "images": [one], "prompt",
    "chosen", "rejected", "strategy"?, "category"?} per line.
  * Preferences, POVID's JSON: a list of {"id", "image", "conversations": [human, gpt], "rejected_conversations":
    [human, gpt]}: the prompt is the human turn, chosen/rejected the two gpt turns.

Bad input: a malformed record raises ValueError naming the file and line (JSONL) or item index (JSON); with
on_bad_sample="skip" it is counted by reason instead, and `Skips.report()` lists the counts. A missing or
unreadable image names its path. Empty responses and chosen == rejected are skipped and counted. A sequence longer
than max_len loses the end of its response, never image tokens or prompt (counted as truncated).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

import torch

from model import load_image
from model.image import open_image, pil_from_tensor01, pil_to_tensor01
from model.tokenizer import IGNORE_INDEX, pad_sequences


@dataclass
class Skips:
    policy: str = "error"  # "error" | "skip"
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    truncated: int = 0

    def bad(self, reason: str, where: str):
        if self.policy == "error":
            raise ValueError(f"{where}: {reason}")
        self.counts[reason] += 1
        self.examples.setdefault(reason, where)

    def report(self) -> str:
        lines = [f"  skipped {n} x {r} (first: {self.examples[r]})" for r, n in self.counts.most_common()]
        if self.truncated:
            lines.append(f"  truncated {self.truncated} response(s) to max_len")
        return "\n".join(lines) if lines else "  nothing skipped or truncated"


def _resolve(root: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


def read_records(path: str):
    """(where, record) pairs from a JSON list or a JSONL file; malformed JSON names its line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None
        return [(f"{path}: item {i}", it) for i, it in enumerate(items)], []
    out, bad = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                bad.append((f"{path}:{n}", f"malformed JSON ({e.msg})"))
    return out, bad


def parse_preference(rec: dict):
    """One record of either preference format -> (prompt, chosen, rejected, image); KeyError names what is missing."""
    if "rejected_conversations" in rec:  # POVID's JSON
        c, r = rec["conversations"], rec["rejected_conversations"]
        return c[0]["value"], c[1]["value"], r[1]["value"], rec["image"]
    image = rec["image"] if "image" in rec else rec["images"][0]
    return rec["prompt"], rec["chosen"], rec["rejected"], image


class ImageCache:
    """Preprocessed pixel tensors, loaded once per path (toy images are tiny; real runs may disable it)."""

    def __init__(self, size: int, pad: bool, enabled: bool = True):
        self.size, self.pad, self.enabled, self.cache = size, pad, enabled, {}

    def clean(self, path: str):
        if path not in self.cache or not self.enabled:
            px = load_image(path, self.size, pad=self.pad)
            if not self.enabled:
                return px
            self.cache[path] = px
        return self.cache[path]

    def noisy(self, path: str, t: int, schedule, generator):
        """POVID: DDPM noise on the [0, 1] RGB image *before* padding and CLIP preprocessing, clamped."""
        from noise import noise_image
        x01 = pil_to_tensor01(open_image(path).convert("RGB"))  # (3, H, W) in [0, 1]
        return load_image(pil_from_tensor01(noise_image(x01, t, schedule, generator)), self.size, pad=self.pad)


def truncate(ids, labels, max_len: int, skips: Skips, where: str):
    """Cut the response end; never the prompt or image tokens. None if even the prompt does not fit."""
    if len(ids) <= max_len:
        return ids, labels
    first_scored = next((i for i, l in enumerate(labels) if l != IGNORE_INDEX), len(labels))
    if first_scored >= max_len:
        skips.bad(f"prompt and image tokens alone exceed max_len={max_len}", where)
        return None
    skips.truncated += 1
    return ids[:max_len], labels[:max_len]


def load_sft(path: str, tok, num_image_tokens: int, template: str, max_len: int, skips: Skips):
    """-> list of dicts(id, image, input_ids, labels)."""
    records, bad = read_records(path)
    for where, reason in bad:
        skips.bad(reason, where)
    root, out = os.path.dirname(os.path.abspath(path)), []
    for where, rec in records:
        try:
            conv, image = rec["conversations"], _resolve(root, rec["image"])
            ids, labels = tok.encode_chat(conv, num_image_tokens, template=template)
        except (KeyError, TypeError, IndexError) as e:
            skips.bad(f"malformed record (missing {e})", where)
            continue
        except ValueError as e:
            skips.bad(str(e), where)
            continue
        if not os.path.isfile(image):
            skips.bad(f"missing image {image}", where)
            continue
        cut = truncate(ids, labels, max_len, skips, where)
        if cut is not None:
            out.append({"id": str(rec.get("id", where)), "image": image, "input_ids": cut[0], "labels": cut[1]})
    return out


def load_pairs(path: str, tok, num_image_tokens: int, template: str, max_len: int, skips: Skips):
    """-> list of dicts(id, image, chosen_ids, chosen_labels, rejected_ids, rejected_labels, strategy)."""
    records, bad = read_records(path)
    for where, reason in bad:
        skips.bad(reason, where)
    root, out = os.path.dirname(os.path.abspath(path)), []
    for where, rec in records:
        try:
            prompt, chosen, rejected, image = parse_preference(rec)
        except (KeyError, TypeError, IndexError) as e:
            skips.bad(f"malformed record (missing {e})", where)
            continue
        image = _resolve(root, image)
        if not str(chosen).strip() or not str(rejected).strip():
            skips.bad("empty response", where)
            continue
        if chosen.strip() == rejected.strip():
            skips.bad("chosen == rejected", where)
            continue
        if not os.path.isfile(image):
            skips.bad(f"missing image {image}", where)
            continue
        row = {"id": str(rec.get("id", where)), "image": image, "strategy": rec.get("strategy", "")}
        ok = True
        for side, text in (("chosen", chosen), ("rejected", rejected)):
            ids, labels = tok.encode_pair(prompt, text, num_image_tokens, template=template)
            cut = truncate(ids, labels, max_len, skips, where)
            if cut is None:
                ok = False
                break
            row[f"{side}_ids"], row[f"{side}_labels"] = cut
        if ok:
            out.append(row)
    return out


def check_images(rows, cache: ImageCache, skips: Skips):
    """Load every image once up front, so an unreadable file is reported (or skipped) before training starts."""
    kept = []
    for r in rows:
        try:
            cache.clean(r["image"])
        except (OSError, ValueError) as e:
            skips.bad(f"unreadable image ({e})", r["id"])
            continue
        kept.append(r)
    return kept


def collate_sft(rows, pad_id: int, cache: ImageCache):
    ids, mask, labels = pad_sequences([r["input_ids"] for r in rows], pad_id, side="right",
                                      labels=[r["labels"] for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "pixel_values": torch.stack([cache.clean(r["image"]) for r in rows]), "ids": [r["id"] for r in rows]}


def collate_pairs(rows, pad_id: int, cache: ImageCache):
    """Chosen rows first, then rejected rows, one padded batch (2B, T): both share one forward."""
    seqs = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
    labs = [r["chosen_labels"] for r in rows] + [r["rejected_labels"] for r in rows]
    ids, mask, labels = pad_sequences(seqs, pad_id, side="right", labels=labs)
    px = torch.stack([cache.clean(r["image"]) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": torch.cat([px, px]),
            "ids": [r["id"] for r in rows], "images": [r["image"] for r in rows]}
