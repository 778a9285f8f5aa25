"""The toy demo's claim in one place: the guards, the checkpoint-selection rule, the targets, and what "ahead at equal
recall" means. toy/demo.py applies select() to every run's validation curve, toy/report.py checks the targets on one
seed (verdicts) and toy/seeds.py on the mean over SFT seeds (seed_verdicts); none of these numbers is set anywhere else.

The selection rule, the same for every method and control, fixed before the runs it is applied to:
    every DPO run saves its merged model every `export_every` steps (train.py --export_every), and each one is
    evaluated on the validation scenes. The selected checkpoint is the last one along training (the most steps) whose
    validation recall is at most GUARDS["recall"] below the baseline's and whose validation POPE F1 (mean of random,
    popular, adversarial) is at most GUARDS["pope_f1"] below it; when no checkpoint is, the start model (step 0: no
    tuning at all). Only the selected checkpoint is evaluated on the test scenes, and those numbers are reported.
The guards are the issue's (3 points of recall, 0.5 of POPE F1), with no margin: a checkpoint chosen on validation
scenes can land outside them on the test scenes, and the report says so when it does.

Equal recall: a run's CHAIR_i at recall r is the lowest it reaches along its validation curve (the start model, then
its checkpoints in training order, joined by straight lines) while its recall is at least r: the points with recall
>= r and the points where a segment crosses r. POVID is compared with each control at r = the validation recall of
POVID's selected checkpoint, or, where a control never falls that far, at the lowest recall that control reaches (the
common range ends there). POVID is ahead when its CHAIR_i there is lower: the control gets its best point on that
range, not the one its own selection took.
"""
from __future__ import annotations

GUARDS = {"recall": 0.03, "pope_f1": 0.005}  # the most a selected checkpoint may lose on validation (fractions)
TARGETS = {
    "baseline_chair_i": (0.10, 0.40),  # the baseline must hallucinate (test CHAIR_i) ...
    "baseline_recall": 0.60,  # ... while it still names most of what is there
    "cut": {"povid": 0.30, "clip_dpo": 0.15},  # relative test CHAIR_i cut at the selected checkpoint
}
METHODS = ("povid", "injection_only", "noise_only", "nll_only", "clip_dpo")  # every curve; the report's order
CONTROLS = ("injection_only", "noise_only", "nll_only")  # POVID must be ahead of each at equal recall


def within_guards(m: dict, base: dict) -> bool:
    """At most the guards' drop below the baseline (a drop of exactly 3 points is within: 1e-9 absorbs the floats)."""
    return (base["recall"] - m["recall"] <= GUARDS["recall"] + 1e-9
            and base["pope_f1"] - m["pope_f1"] <= GUARDS["pope_f1"] + 1e-9)


def select(curve: list[dict], base: dict) -> dict:
    """`curve`: the run's validation points [{step, recall, pope_f1, ...}] in training order, the start model (step 0,
    = `base`) first -> the selected point (see the module docstring)."""
    ok = [pt for pt in curve if within_guards(pt, base)]
    return max(ok, key=lambda pt: pt["step"]) if ok else curve[0]


def chair_at_recall(curve: list[dict], r: float):
    """The lowest CHAIR_i along the curve ([{recall, chair_i}, ...] in training order, straight lines between the
    points) while recall >= r; None when no point has recall >= r."""
    vals = [pt["chair_i"] for pt in curve if pt["recall"] >= r]
    for a, b in zip(curve, curve[1:]):
        if (a["recall"] - r) * (b["recall"] - r) < 0:  # the segment crosses r
            t = (a["recall"] - r) / (a["recall"] - b["recall"])
            vals.append(a["chair_i"] + t * (b["chair_i"] - a["chair_i"]))
    return min(vals) if vals else None


def equal_recall(curves: dict, selected_povid: dict) -> dict:
    """{run: {recall, povid, control, ahead}} for every run but POVID (the controls, and CLIP-DPO for the record):
    both CHAIR_i at the same validation recall (see the module docstring); ahead = POVID's is lower."""
    out = {}
    for name in METHODS[1:]:
        r = max(selected_povid["recall"], min(pt["recall"] for pt in curves[name]))
        mine, theirs = chair_at_recall(curves["povid"], r), chair_at_recall(curves[name], r)
        out[name] = {"recall": r, "povid": mine, "control": theirs,
                     "ahead": None if mine is None or theirs is None else mine < theirs}
    return out


def verdicts(test: dict, selected: dict, val_base: dict, ahead: dict, where: str) -> tuple[list[str], dict]:
    """The targets on one seed's test numbers at the selected checkpoints -> (report lines, {target: met}).
    `test`: {run: summarised test metrics} with "baseline"; `selected`: {method: selected validation point};
    `ahead`: equal_recall()'s result; `where`: the host and seed the numbers come from."""
    b, met, lines = test["baseline"], {}, []
    lo, hi = TARGETS["baseline_chair_i"]
    met["baseline"] = lo <= b["chair_i"] <= hi and b["recall"] >= TARGETS["baseline_recall"]
    lines.append(f"baseline ({where}): test CHAIR_i {100 * b['chair_i']:.1f}% (target {100 * lo:.0f}-{100 * hi:.0f}%), "
                 f"recall {100 * b['recall']:.1f}% (target >= {100 * TARGETS['baseline_recall']:.0f}%): "
                 f"{'met' if met['baseline'] else 'MISSED'}")
    for name, need in TARGETS["cut"].items():
        r, s = test[name], selected[name]
        cut = 1 - r["chair_i"] / b["chair_i"] if b["chair_i"] else 0.0
        met[name] = s["step"] > 0 and cut >= need  # step 0 = nothing kept the guards: no tuning, no cut
        test_guards = within_guards(r, b)
        lines.append(
            f"{name} ({where}, checkpoint step {s['step']}): test CHAIR_i {-100 * cut:+.1f}% relative (target >= "
            f"{100 * need:.0f}%) at a checkpoint within the validation guards (recall {_pts(s['recall'] - val_base['recall'])}, "
            f"POPE F1 {_pts(s['pope_f1'] - val_base['pope_f1'])}): {'met' if met[name] else 'MISSED'}. On the test "
            f"scenes: recall {_pts(r['recall'] - b['recall'])}, POPE F1 {_pts(r['pope_f1'] - b['pope_f1'])}, CHAIR_s "
            f"{100 * b['chair_s']:.1f} -> {100 * r['chair_s']:.1f} ({'within' if test_guards else 'OUTSIDE'} the guards "
            f"there)")
    behind = [c for c in CONTROLS if not ahead[c]["ahead"]]
    met["povid_ahead"] = not behind
    lines.append(f"povid ahead of every control at equal validation recall ({where}): "
                 + "; ".join(_ahead_text(c, ahead[c]) for c in CONTROLS) + f": {'met' if not behind else 'MISSED'}")
    return lines, met


def _ahead_text(name, a):
    if a["ahead"] is None:
        return f"{name}: no common recall"
    return (f"{name} CHAIR_i {100 * a['control']:.1f} vs povid {100 * a['povid']:.1f} at recall "
            f"{100 * a['recall']:.1f}")


def _pts(x):
    return f"{100 * x:+.1f}"


def seed_verdicts(reports: list[dict]) -> tuple[list[str], dict]:
    """The targets on the mean over SFT seeds (toy/seeds.py): `reports` = each seed's report.json -> (lines, met).
    Each seed's numbers are at its own selected checkpoints; the mean is over seeds, with the seeds listed."""
    seeds = ", ".join(str(r["seed"]) for r in reports)
    cpu = reports[0]["host"]
    where = f"host {cpu['cpu']} x{cpu['cores']}, mean over seeds {seeds}"
    lines, met = [], {}
    for name, need in TARGETS["cut"].items():
        cuts = [1 - r[name]["chair_i"] / r["baseline"]["chair_i"] for r in reports]
        steps = [r[name]["step"] for r in reports]
        mean = sum(cuts) / len(cuts)
        met[name] = mean >= need and all(s > 0 for s in steps)
        lines.append(f"{name} ({where}; checkpoint steps {' / '.join(map(str, steps))}): test CHAIR_i "
                     f"{-100 * mean:+.1f}% relative (each seed: {' / '.join(f'{-100 * c:+.1f}%' for c in cuts)}; target "
                     f">= {100 * need:.0f}%): {'met' if met[name] else 'MISSED'}")
    gaps = {c: [r["equal_recall"][c] for r in reports] for c in CONTROLS}
    text = []
    for c, per in gaps.items():
        d = [None if e["ahead"] is None else e["control"] - e["povid"] for e in per]
        ok = all(x is not None for x in d) and sum(d) / len(d) > 0
        met[f"povid_ahead_{c}"] = ok
        text.append(f"{c} {'n/a' if not all(x is not None for x in d) else f'{100 * sum(d) / len(d):+.1f}'} "
                    f"({' / '.join('n/a' if x is None else f'{100 * x:+.1f}' for x in d)})")
    met["povid_ahead"] = all(met[f"povid_ahead_{c}"] for c in CONTROLS)
    lines.append(f"povid ahead of every control at equal validation recall ({where}; each control's CHAIR_i minus "
                 f"POVID's, points, mean (each seed)): {'; '.join(text)}: {'met' if met['povid_ahead'] else 'MISSED'}")
    return lines, met
