"""`make demo-seeds`: the toy demo for several SFT seeds, and every method's numbers per seed, their mean and spread.

One SFT model is one draw: the seed of the tower pretraining and the SFT moves the trade-off by more than the
guards' width (docs/toy.md), so the claim is made on the mean over seeds, each seed reported. Each seed is a whole
pipeline (toy/demo.py, its own selection on validation) in OUT/seed_S/. The tiny CLIP does not depend on the seed
(toy/train_clip.py keeps its own seed 0 and reads only the world and the rules' captions), so it is trained once, in
the first seed's directory, and hard-linked into the others, where the pipeline reuses it.

    python -m toy.seeds [--seeds 0,1,2] [--out out/toy_seeds] [--quick]

Writes OUT/report.md (one table: each method's test numbers at its selected checkpoints, per seed and mean +- sd;
the targets on the mean, toy/selection.py), OUT/report.json and OUT/curves.png (one panel per seed).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time

from toy import selection
from toy.figure import curves_png
from model.files import write_atomic


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated SFT seeds")
    ap.add_argument("--out", default=None, help="default: out/toy_seeds (out/toy_seeds_quick with --quick)")
    ap.add_argument("--quick", action="store_true", help="the quick pipeline per seed (a smoke test)")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from toy.demo import run_pipeline
    out = args.out or ("out/toy_seeds_quick" if args.quick else "out/toy_seeds")
    seeds = [int(s) for s in args.seeds.split(",")]
    t0, load0 = time.time(), os.getloadavg()
    reports = []
    for k, seed in enumerate(seeds):
        d = os.path.join(out, f"seed_{seed}")
        first_clip = os.path.join(out, f"seed_{seeds[0]}", "clip")
        if k and os.path.exists(os.path.join(first_clip, "model.safetensors")) and not os.path.exists(
                os.path.join(d, "clip")):
            shutil.copytree(first_clip, os.path.join(d, "clip"), copy_function=os.link)
        print(f"=== seed {seed} -> {d}", flush=True)
        reports.append(run_pipeline(d, args.quick, seed))
    write_seeds_report(out, reports, time.time() - t0, load0)


def write_seeds_report(out, reports, wall, load_start):
    """The per-seed reports -> OUT/report.md, report.json, curves.png."""
    lines_v, met = selection.seed_verdicts(reports)
    runs = ["baseline", *selection.METHODS]
    table = {}
    for name in runs:
        per = [_numbers(r, name) for r in reports]
        table[name] = {k: {"seeds": [p[k] for p in per], "mean": statistics.mean(p[k] for p in per),
                           "sd": statistics.stdev(p[k] for p in per) if len(per) > 1 else 0.0} for k in per[0]}
    seeds = [r["seed"] for r in reports]
    la_end = os.getloadavg()
    summary = {"seeds": seeds, "host": reports[0]["host"], "wall_s": round(wall, 1),
               "seed_wall_s": [r["wall_s"] for r in reports], "load_avg": {"start": list(load_start),
                                                                          "end": list(la_end)},
               "table": table, "verdicts": lines_v, "met": met, "guards": selection.GUARDS,
               "targets": selection.TARGETS}
    h = reports[0]["host"]
    lines = [f"# Toy world over SFT seeds {', '.join(map(str, seeds))}", "",
             f"Host {h['cpu']} x{h['cores']}; wall time {wall / 60:.1f} min for all seeds "
             f"({' / '.join(f'{w / 60:.1f}' for w in summary['seed_wall_s'])} min each; load average "
             f"{load_start[0]:.2f} at the start, {la_end[0]:.2f} at the end). Test scenes, each method at the "
             f"checkpoint its seed's validation selection took; per seed ({' / '.join(map(str, seeds))}), then the "
             "mean +- the standard deviation over seeds. CHAIR_i change relative to each seed's baseline; recall and "
             "POPE F1 changes in points.", "",
             "| run | checkpoint (steps) | CHAIR_i | CHAIR_i vs base | recall change | POPE F1 change |",
             "|---|---|---|---|---|---|"]
    for name in runs:
        t = table[name]
        steps = " / ".join(str(s) for s in t["step"]["seeds"]) if name != "baseline" else "–"
        lines.append(f"| {name} | {steps} | {_cell(t['chair_i'])} | {_cell(t['chair_i_rel'], '%')} | "
                     f"{_cell(t['recall_change'])} | {_cell(t['pope_f1_change'])} |")
    lines += ["", "Targets (on the mean over seeds):", *[f"- {v}" for v in lines_v], "",
              "![CHAIR_i against recall along training, one panel per seed](curves.png)"]
    panels = [{"title": f"seed {r['seed']} (validation)", "base": r["validation"]["baseline"],
               "curves": r["validation"]["curves"], "selected": {m: r[m]["step"] for m in selection.METHODS}}
              for r in reports]
    curves_png(os.path.join(out, "curves.png"), panels)
    write_atomic(os.path.join(out, "report.json"), json.dumps(summary, indent=2))
    write_atomic(os.path.join(out, "report.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def _numbers(r, name):
    """One run's test numbers in one seed's report (rates and changes in percent / points)."""
    m, b = r[name], r["baseline"]
    return {"step": m.get("step", 0), "chair_i": 100 * m["chair_i"], "chair_i_rel": 100 * (m["chair_i"] / b["chair_i"] - 1),
            "recall": 100 * m["recall"], "recall_change": 100 * (m["recall"] - b["recall"]),
            "pope_f1": 100 * m["pope_f1"], "pope_f1_change": 100 * (m["pope_f1"] - b["pope_f1"])}


def _cell(t, unit=""):
    return " / ".join(f"{v:+.1f}{unit}" if unit or v < 0 else f"{v:.1f}" for v in t["seeds"]) + \
        f" ({t['mean']:+.1f}{unit} +- {t['sd']:.1f})"


if __name__ == "__main__":
    main()
