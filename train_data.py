"""Datasets and collation for train.py: SFT conversations and DPO preference pairs, with strict input checks.

Formats read (image paths are relative to `image_root`, by default the data file's directory, unless absolute; a
record without an image is a text-only sample, as in LLaVA's own instruction mix):
  * SFT: LLaVA conversation JSON, a list of {"id", "image", "conversations": [{"from": "human"|"gpt", "value"}..]}
    (JSONL with one such object per line also loads). Every answer and its </s> is scored.
  * Preferences, TRL-style JSONL (what hallucinate.py writes), one object per line:
    {"id", "image" | "images": [one path], "prompt", "chosen", "rejected", "strategy"?, "category"?}.
  * Preferences, POVID's JSON: a list of {"id", "image", "conversations", "rejected_conversations"}; the two
    conversations share every turn but the last answer, which is chosen vs rejected. Only that answer is scored.

Bad input, by kind:
  * a malformed record (bad JSON, a missing key, a wrong type) names the file and line (JSONL) or item (JSON);
    a missing or unreadable image names the record's line or item and the image's path. With on_bad_sample="error"
    (default) it raises DataError (a ValueError); with "skip" it is counted by reason, and `Skips.report()` lists
    the counts with the first place each was seen.
  * an empty response and chosen == rejected carry no signal: always skipped and counted, never an error.
  * a sequence longer than max_len loses the end of its response, never image tokens or the prompt; truncations
    are counted. A prompt that alone exceeds max_len is a bad sample (it would score nothing).

    skips = Skips("skip"); images = ImageStore(size=336, pad=True, cache_mb=1024)
    rows = load_pairs("pairs.jsonl", tok, 576, "vicuna_v1", 2048, skips, image_root="coco/train2014")
    rows = check_images(rows, image_problems({r["image"] for r in rows if r["image"]}, images), skips)
    batch = collate_pairs(rows[:4], tok.pad_id, images)   # chosen rows then rejected rows, (2B, T)
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, OrderedDict

import torch
import torch.distributed as dist

from model import load_image
from model.image import open_image, pil_from_tensor01, pil_to_tensor01
from model.tokenizer import IGNORE_INDEX, pad_sequences


class DataError(ValueError):
    """A bad input file or record, its message naming the file and line or item: train.py prints it as one line."""


class Skips:
    """Counts of skipped items by reason (with the first place seen) and of truncated sequences."""

    def __init__(self, policy: str = "error"):
        if policy not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {policy!r}")
        self.policy, self.counts, self.first, self.truncated = policy, Counter(), {}, 0

    def bad(self, reason: str, where: str, detail: str = ""):
        """A malformed or unusable sample: raise (policy "error") or count it (policy "skip")."""
        msg = f"{where}: {reason}" + (f": {detail}" if detail else "")
        if self.policy == "error":
            raise DataError(msg + " (--on_bad_sample=skip counts and skips such samples)")
        self.skip(reason, msg)

    def skip(self, reason: str, where: str):
        """A well-formed sample that carries no training signal: always skipped, counted."""
        self.counts[reason] += 1
        self.first.setdefault(reason, where)

    def report(self) -> str:
        lines = [f"  skipped {n} x {r} (first: {self.first[r]})" for r, n in self.counts.most_common()]
        if self.truncated:
            lines.append(f"  truncated the response of {self.truncated} sequence(s) to max_len")
        return "\n".join(lines) if lines else "  nothing skipped or truncated"


def read_records(path: str, skips: Skips):
    """[(where, record)] from a JSON list or a JSONL file. Malformed JSON names its line."""
    if not os.path.isfile(path):
        raise DataError(f"data file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:  # one list: nothing after the error can be trusted
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        return [(f"{path}: item {i}", it) for i, it in enumerate(items)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                skips.bad("malformed JSON", f"{path}:{n}", e.msg)
    return out


def _image_path(rec: dict, root: str):
    """The record's one image as a path (None = text-only). Raises KeyError/ValueError on a malformed field."""
    if "images" in rec:
        imgs = rec["images"]
        if not isinstance(imgs, list) or len(imgs) != 1:
            raise ValueError(f"'images' must list exactly one path, got {imgs!r}")
        img = imgs[0]
    else:
        img = rec.get("image")
    if img is None:
        return None
    if not isinstance(img, str) or not img:
        raise ValueError(f"'image' must be a path string, got {img!r}")
    return img if os.path.isabs(img) else os.path.join(root, img)


def truncate(ids, labels, max_len: int):
    """Cut the end of the response; never the prompt or image tokens (all before the first scored token).
    Returns (ids, labels, was_cut) or None when the prompt alone leaves no scored token within max_len."""
    if len(ids) <= max_len:
        return ids, labels, False
    first_scored = next((i for i, l in enumerate(labels) if l != IGNORE_INDEX), len(labels))
    if first_scored >= max_len:  # not one answer token left
        return None
    return ids[:max_len], labels[:max_len], True


def _last_answer_only(labels):
    """Multi-turn preference conversations: score only the final answer (the turns before it are shared)."""
    k = len(labels)
    while k > 0 and labels[k - 1] == IGNORE_INDEX:
        k -= 1
    while k > 0 and labels[k - 1] != IGNORE_INDEX:
        k -= 1
    return [IGNORE_INDEX] * k + labels[k:]


def _fit(ids, labels, max_len, skips, where):
    cut = truncate(ids, labels, max_len)
    if cut is None:
        skips.bad("prompt longer than max_len", where, f"{len(ids)} tokens, max_len={max_len}")
        return None
    skips.truncated += cut[2]
    return cut[0], cut[1]


def _parse_or_skip(parse, skips: Skips, where: str, *args):
    """parse(*args), or None after reporting a malformed record (a missing key or a bad value) at `where`."""
    try:
        return parse(*args)
    except KeyError as e:
        skips.bad("malformed record", where, f"missing key {e}")
    except (ValueError, TypeError) as e:
        skips.bad("malformed record", where, str(e))
    return None


def _parse_sft(rec, root, tok, num_image_tokens: int, template: str):
    """One conversation record -> (image, conversations, ids, labels)."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    image = _image_path(rec, root)
    conv = rec["conversations"]
    ids, labels = tok.encode_chat(conv, num_image_tokens if image else 0, template=template)
    return image, conv, ids, labels


def load_sft(path: str, tok, num_image_tokens: int, template: str, max_len: int, skips: Skips,
             image_root: str = ""):
    """LLaVA conversation JSON -> [{"id", "image", "input_ids", "labels"}]. Relative image paths are joined to
    image_root (default: the data file's directory)."""
    root, out = image_root or os.path.dirname(os.path.abspath(path)), []
    for where, rec in read_records(path, skips):
        parsed = _parse_or_skip(_parse_sft, skips, where, rec, root, tok, num_image_tokens, template)
        if parsed is None:
            continue
        image, conv, ids, labels = parsed
        if not any(isinstance(t, dict) and t.get("from") == "gpt" and str(t.get("value", "")).strip() for t in conv):
            skips.skip("empty response", where)
            continue
        fit = _fit(ids, labels, max_len, skips, where)
        if fit:
            out.append({"id": str(rec.get("id", where)), "where": where, "image": image, "input_ids": fit[0],
                        "labels": fit[1]})
    return out


def _parse_preference(rec: dict, root: str, tok, num_image_tokens: int, template: str):
    """One record of either format -> (image, chosen_text, rejected_text, (ids, labels) chosen, rejected)."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    image = _image_path(rec, root)
    n_img = num_image_tokens if image else 0
    if "conversations" in rec and "rejected_conversations" not in rec:
        raise ValueError("a POVID item (it has 'conversations') needs 'rejected_conversations', the same turns with "
                         "the rejected last answer; a TRL line needs 'prompt', 'chosen', 'rejected' instead")
    if "rejected_conversations" in rec:  # POVID's JSON
        c, r = rec["conversations"], rec["rejected_conversations"]
        if not isinstance(c, list) or not isinstance(r, list) or len(c) != len(r) or len(c) < 2:
            raise ValueError("'conversations' and 'rejected_conversations' must be turn lists of the same length")
        if c[:-1] != r[:-1]:
            raise ValueError("'conversations' and 'rejected_conversations' differ before the last answer")
        chosen, rejected = c[-1]["value"], r[-1]["value"]
        ce, re = tok.encode_chat(c, n_img, template=template), tok.encode_chat(r, n_img, template=template)
        ce, re = (ce[0], _last_answer_only(ce[1])), (re[0], _last_answer_only(re[1]))
    else:  # TRL-style
        prompt, chosen, rejected = rec["prompt"], rec["chosen"], rec["rejected"]
        for k, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            if not isinstance(v, str):
                raise ValueError(f"'{k}' must be a string, got {type(v).__name__}")
        ce = tok.encode_pair(prompt, chosen, n_img, template=template)
        re = tok.encode_pair(prompt, rejected, n_img, template=template)
    return image, chosen, rejected, ce, re


def load_pairs(path: str, tok, num_image_tokens: int, template: str, max_len: int, skips: Skips,
               image_root: str = ""):
    """Preference JSONL or POVID JSON -> [{"id", "image", "strategy", "chosen_ids", "chosen_labels",
    "rejected_ids", "rejected_labels"}]. Relative image paths are joined to image_root (default: the data file's
    directory); POVID's released JSON names bare COCO files, so pass its train2014/ folder."""
    root, out = image_root or os.path.dirname(os.path.abspath(path)), []
    for where, rec in read_records(path, skips):
        parsed = _parse_or_skip(_parse_preference, skips, where, rec, root, tok, num_image_tokens, template)
        if parsed is None:
            continue
        image, chosen, rejected, ce, re = parsed
        if not str(chosen).strip() or not str(rejected).strip():
            skips.skip("empty response", where)
            continue
        if str(chosen).strip() == str(rejected).strip():
            skips.skip("chosen == rejected", where)
            continue
        c, r = _fit(*ce, max_len, skips, where), _fit(*re, max_len, skips, where)
        if c is None or r is None:
            continue
        if c == r:  # the two answers differ only past max_len
            skips.skip("chosen == rejected within max_len", where)
            continue
        out.append({"id": str(rec.get("id", where)), "where": where, "image": image,
                    "strategy": rec.get("strategy", ""), "chosen_ids": c[0], "chosen_labels": c[1],
                    "rejected_ids": r[0], "rejected_labels": r[1]})
    return out


class ImageStore:
    """Pixel tensors by path, with a bounded cache: the preprocessed (3, S, S) images and, for POVID's noise, the
    decoded [0, 1] originals are kept up to `cache_mb` MiB, least recently used out first. A small data set (the
    toy world) stays decoded; a COCO-sized one (17K images, ~1.4 MB each at 336 px, ~3.7 MB for a 640 x 480
    original) decodes per step, bounded in memory whatever the data size. cache_mb=0: no cache."""

    def __init__(self, size: int, pad: bool, cache_mb: float = 1024):
        self.size, self.pad, self.budget = size, pad, int(cache_mb * 2 ** 20)
        self._cache, self._bytes = OrderedDict(), 0  # (kind, path) -> tensor, in use order

    def _get(self, key, make):
        x = self._cache.get(key)
        if x is not None:
            self._cache.move_to_end(key)
            return x
        x = make()
        n = x.numel() * x.element_size()
        if n <= self.budget:
            self._cache[key], self._bytes = x, self._bytes + n
            while self._bytes > self.budget:
                _, old = self._cache.popitem(last=False)
                self._bytes -= old.numel() * old.element_size()
        return x

    def pixels(self, path: str):
        """(3, S, S) CLIP-normalised."""
        return self._get(("px", path), lambda: load_image(path, self.size, pad=self.pad))

    def noisy(self, path: str, t: int, schedule, generator):
        """POVID: DDPM noise q(x_t | x_0) on the [0, 1] RGB image at its own resolution, *before* padding and CLIP
        preprocessing (as POVID's training code), clamped to [0, 1] (noise.noise_image), then preprocessed."""
        from noise import noise_image
        x01 = self._get(("raw", path), lambda: pil_to_tensor01(open_image(path).convert("RGB")))  # (3, H, W)
        return load_image(pil_from_tensor01(noise_image(x01, t, schedule, generator)), self.size, pad=self.pad)

    def noisy_batch(self, paths, t: int, schedule, seeds):
        """noisy() of each path, its noise from a generator seeded with its seed: (P, 3, S, S)."""
        return torch.stack([self.noisy(p, t, schedule, torch.Generator().manual_seed(s)) for p, s in zip(paths, seeds)])

    def check(self, path: str):
        """Raise naming the path if the image is missing or unreadable: a full decode (and preprocessing, which
        the cache keeps while it has room), so a truncated file fails here, not mid-run."""
        self.pixels(path)


def image_problems(paths, images: ImageStore) -> dict:
    """Open each image once (a full decode, so a truncated file fails here, not mid-run) -> {path: (reason,
    detail)} of the missing and unreadable ones. train.py gives each rank its share and gathers the answers."""
    bad = {}
    for path in paths:
        try:
            images.check(path)
        except FileNotFoundError:
            bad[path] = ("missing image", path)
        except (OSError, ValueError) as e:
            bad[path] = ("unreadable image", f"{path}: {e}" if path not in str(e) else str(e))
    return bad


def shared_image_problems(rows, images: ImageStore, rank: int = 0, world: int = 1) -> dict:
    """image_problems of the rows' images under torchrun: each image opened by one rank (every world-th path), the
    verdicts gathered, so every rank drops the same rows without every rank decoding every image."""
    paths = sorted({r["image"] for r in rows if r["image"] is not None})
    bad = image_problems(paths[rank::world], images)
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, bad)
        bad = {k: v for part in parts for k, v in part.items()}
    return bad


def check_images(rows, bad: dict, skips: Skips):
    """The rows whose image is not in `bad` (image_problems); each bad one reported (or skipped, counted) naming the
    data file's line or item, the record's id and the image, before any training."""
    kept = []
    for r in rows:
        if r["image"] in bad:
            reason, detail = bad[r["image"]]
            skips.bad(reason, f"{r['where']} (id {r['id']!r})", detail)
            continue
        kept.append(r)
    return kept


def _pixels(rows, images: ImageStore):
    px = [images.pixels(r["image"]) for r in rows if r["image"] is not None]
    return torch.stack(px) if px else None  # (B_img, 3, S, S), in row order: the model splices them in order


def scored_rows(labels):
    """(M,) flat indices into (B * T) of the positions that score a target (position t predicts labels[t + 1]), in
    order. Known here, on the host, so the loss gathers its rows without asking the GPU how many there are."""
    scored = torch.zeros_like(labels, dtype=torch.bool)
    scored[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return scored.flatten().nonzero()[:, 0]


def collate_sft(rows, pad_id: int, images: ImageStore):
    """Right-padded (B, T) input_ids, attention_mask, labels; pixel_values (B_img, 3, S, S) or None; ids;
    scored_rows (M,)."""
    ids, mask, labels = pad_sequences([r["input_ids"] for r in rows], pad_id, side="right",
                                      labels=[r["labels"] for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": _pixels(rows, images),
            "ids": [r["id"] for r in rows], "scored_rows": scored_rows(labels)}


def collate_pairs(rows, pad_id: int, images: ImageStore):
    """Chosen rows first, then rejected rows, one right-padded batch (2B, T), so both share one forward."""
    seqs = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
    labs = [r["chosen_labels"] for r in rows] + [r["rejected_labels"] for r in rows]
    ids, mask, labels = pad_sequences(seqs, pad_id, side="right", labels=labs)
    px = _pixels(rows, images)
    scored = scored_rows(labels)  # the chosen rows' first: their count, for POVID's noisy pass on them
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "pixel_values": None if px is None else torch.cat([px, px]),  # (2 B_img, 3, S, S)
            "ids": [r["id"] for r in rows], "images": [r["image"] for r in rows], "scored_rows": scored,
            "chosen_rows": scored[:int((scored < len(rows) * ids.shape[1]).sum())]}


WORK = ("tokens", "tokens_x_len", "images", "targets")


def count_work(batches) -> dict:
    """What a step's micro-batches hold, counted from collation's CPU tensors: tokens, tokens x padded length,
    images, scored targets (the rows the LM head runs on; SFT's loss is normalised by their global count)."""
    work = dict.fromkeys(WORK, 0.0)
    for b in batches:
        n_tok = float(b["attention_mask"].sum())
        work["tokens"] += n_tok
        work["tokens_x_len"] += n_tok * b["input_ids"].shape[1]
        work["images"] += 0 if b["pixel_values"] is None else len(b["pixel_values"])
        work["targets"] += float((b["labels"][:, 1:] != -100).sum())
    return work


def _pinned(x):
    """Every tensor inside dicts, lists and tuples copied to pinned (page-locked) host memory."""
    if torch.is_tensor(x):
        return x.pin_memory()
    if isinstance(x, dict):
        return {k: _pinned(v) for k, v in x.items()}
    return type(x)(_pinned(v) for v in x) if isinstance(x, (list, tuple)) else x


class Prefetch:
    """Makes the batches of steps start, start + 1, ... in a background thread, `depth` steps ahead of the training
    loop: image decoding, pad-to-square, normalisation, POVID's noising and collation run while the GPU computes.
    make(step) must be a pure function of the step (global_batch, noise_seed), so what a step gets does not depend
    on the thread's timing and a resumed run gets what an uninterrupted one got. On CUDA the tensors are pinned, so
    their copy to the GPU (non_blocking) does not wait for it. An error in make() is raised by get() of its step."""

    def __init__(self, make, start: int, stop: int, pin: bool, depth: int = 2):
        import queue
        import threading
        self._queue, self._stop = queue.Queue(maxsize=depth), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make, start, stop, pin), daemon=True)
        self._thread.start()

    def _run(self, make, start, stop, pin):
        for step in range(start, stop):
            try:
                out = _pinned(make(step)) if pin else make(step)
            except BaseException as e:  # handed to the training thread, raised there
                out = e
            while not self._stop.is_set():
                try:
                    self._queue.put((step, out), timeout=0.1)
                    break
                except Exception:  # queue.Full: the loop is busy; look at the stop flag again
                    continue
            if isinstance(out, BaseException) or self._stop.is_set():
                return

    def get(self, step: int):
        got, out = self._queue.get()
        assert got == step, f"prefetched step {got}, expected {step}"
        if isinstance(out, BaseException):
            raise out
        return out

    def close(self):
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()



def rows_digest(rows) -> str:
    """The identity of the kept samples, in order (where each came from): equal on every rank, and in a checkpoint."""
    return hashlib.sha256("\n".join(r["where"] for r in rows).encode()).hexdigest()[:16]


def agree_on_rows(rows, data: str, world: int):
    """Under torchrun each rank reads and filters the data file on its own (the images' verdicts are shared): a file
    that changed between the reads would give one rank other samples, then another permutation and step count, then
    a hang. Compare the kept count and digest across the ranks; on a mismatch stop every rank, naming the rank and
    the first kept sample that differs."""
    if world < 2:
        return
    mine = (len(rows), rows_digest(rows))
    parts = [None] * world
    dist.all_gather_object(parts, mine)
    if all(p == parts[0] for p in parts):
        return
    lists = [None] * world
    dist.all_gather_object(lists, [r["where"] for r in rows])
    r = next(i for i, p in enumerate(parts) if p != parts[0])
    a, b = lists[0], lists[r]
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    at = {k: repr(v[i]) if i < len(v) else "none" for k, v in ((0, a), (r, b))}
    raise SystemExit(f"{data}: the ranks kept different samples (rank 0: {len(a)}, rank {r}: {len(b)}); the first "
                     f"difference is kept sample {i}: rank 0 has {at[0]}, rank {r} {at[r]} (did the file change "
                     "while the ranks read it?)")
