"""Paired bootstrap intervals: how much of a run's change against the baseline is the choice of held-out scenes.

The demo reports single numbers ("CHAIR_i -24.6%, recall -2.5") measured on a few hundred scenes, and its targets
are thresholds on them. Drawing the scenes anew - resampling them with replacement, the same draw for the baseline
and the run, since both answered the same scenes (the paired bootstrap: Efron & Tibshirani 1993, ch. 16; Koehn
2004 for evaluation metrics) - shows how far the change moves with the draw alone. For each of `n` draws of N
scene ids out of N, with per-scene counts from the two runs' metric files:

    CHAIR_i change  = (sum hallucinated mentions / sum mentions)_run / (same)_baseline - 1     (relative)
    CHAIR_s change  = (captions with a hallucination / captions)_run - (same)_baseline          (points)
    recall change   = (sum recalled objects / sum ground-truth objects)_run - (same)_baseline   (points)
    POPE F1 change  = mean over the POPE splits of F1 = 2TP / (2TP + FP + FN), run - baseline  (points)

and the interval is the 2.5th and 97.5th percentile of the n changes (percentile method). It measures the scenes'
sampling noise only: a second training seed moves the numbers as much or more (README, "What was tried").

    from toy.bootstrap import paired_intervals
    paired_intervals("out/toy/runs/baseline", "out/toy/runs/povid")   # {"chair_i_rel": (change, lo, hi), ...}
"""
from __future__ import annotations

import json
import os

import numpy as np

from evals.pope import SPLITS, parse_yes_no

STATS = ("chair_i_rel", "chair_s", "recall", "pope_f1")


def scene_counts(run_dir: str, ids: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Per scene: (ids, counts (N, 4 + 3 * n_splits)): mentions, hallucinated mentions, hallucinated caption (0/1),
    [ground-truth objects, recalled objects] ... then TP, FP, FN of every POPE split (in SPLITS order) whose
    answers file is in run_dir. `ids` fixes the scene order (the baseline's), so two runs' rows line up."""
    with open(os.path.join(run_dir, "chair.json")) as f:
        per = json.load(f)["per_caption"]
    if ids is None:
        ids = sorted(per)
    if sorted(per) != sorted(ids):
        raise ValueError(f"{run_dir}/chair.json: its {len(per)} captions are not the baseline's {len(ids)} scenes")
    row = {iid: k for k, iid in enumerate(ids)}
    counts = [[len(per[i]["mentioned"]), len(per[i]["hallucinated"]), bool(per[i]["hallucinated"]),
               len(per[i]["gt"]), len(per[i]["recalled"])] for i in ids]
    pope = np.zeros((len(ids), 3 * len(SPLITS)))
    for s, split in enumerate(SPLITS):
        path = os.path.join(run_dir, f"pope_{split}_answers.jsonl")
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                a = json.loads(line)
                iid = str(a.get("image_id"))
                if iid not in row or a.get("label") not in ("yes", "no"):
                    raise ValueError(f"{path}:{n}: image {iid!r} is not a scored scene or the label "
                                     f"{a.get('label')!r} is not yes/no")
                said, truth = parse_yes_no(a["text"]), a["label"] == "yes"
                if said or truth:  # a true negative enters no F1 term
                    pope[row[iid], 3 * s + (0 if said and truth else 1 if said else 2)] += 1  # TP, FP, FN
    return ids, np.hstack([np.array(counts, dtype=float), pope])


def _stats(c: np.ndarray) -> np.ndarray:
    """(..., N, K) per-scene counts -> (..., 4): CHAIR_i, CHAIR_s, recall, mean POPE F1, summed over scenes."""
    t = c.sum(axis=-2)
    chair_i = t[..., 1] / np.maximum(t[..., 0], 1)
    chair_s = t[..., 2] / c.shape[-2]
    recall = t[..., 4] / np.maximum(t[..., 3], 1)
    tp, fp, fn = t[..., 5::3], t[..., 6::3], t[..., 7::3]
    f1 = (2 * tp / np.maximum(2 * tp + fp + fn, 1)).mean(axis=-1)
    return np.stack([chair_i, chair_s, recall, f1], axis=-1)


def _changes(base: np.ndarray, run: np.ndarray) -> np.ndarray:
    """(..., 4) statistics of the baseline and the run -> (..., 4) changes in STATS order: CHAIR_i relative (nan
    where the baseline has none), the rest run - baseline."""
    rel = run[..., :1] / np.where(base[..., :1] > 0, base[..., :1], np.nan) - 1
    return np.concatenate([rel, run[..., 1:] - base[..., 1:]], axis=-1)


def paired_intervals(base_dir: str, run_dir: str, n: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """{stat: (change, low, high)} for STATS: the run's change against the baseline on all the scenes, and its
    interval over `n` paired resamples of them; CHAIR_i relative, the rest in fractions (x100 for points)."""
    ids, base = scene_counts(base_dir)
    _, run = scene_counts(run_dir, ids)
    change = _changes(_stats(base), _stats(run))
    rng = np.random.default_rng(seed)
    draws = []
    for chunk in range(0, n, 250):  # (250, N, K) gathers at a time: a few MB for the demo's splits
        idx = rng.integers(0, len(ids), size=(min(250, n - chunk), len(ids)))
        draws.append(_changes(_stats(base[idx]), _stats(run[idx])))
    low, high = np.nanpercentile(np.concatenate(draws), [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
    return {k: (float(change[i]), float(low[i]), float(high[i])) for i, k in enumerate(STATS)}
