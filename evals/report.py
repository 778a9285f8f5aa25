"""`eval.py report`: every benchmark of every run in one table (report.md) and all their metrics (report.json).

    python eval.py report RUN_DIR... [--out DIR]     # DIR/report.md + DIR/report.json (default DIR: the runs' parent)

A run dir holds the metrics JSON the scoring commands write, {"kind": "chair"|"pope"|"mmhal", "metrics": {...}, ...};
other JSON files (configs) are passed over, two files of one kind (and POPE split) are an error. The POPE F1 mean is
the mean of the three splits' F1 (LLaVA's single "POPE" number), shown only when all three were scored. Rates are
fractions in JSON, percent in report.md.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

from evals.files import read_json, write_atomic, write_json
from evals.pope import SPLITS


def collect_run(run_dir: str) -> dict:
    run: dict = {"run": run_dir, "chair": None, "pope": {}, "mmhal": None, "pope_parser": {}, "mmhal_judge": None}
    origin: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "*.json"))):
        if os.path.basename(path).startswith("report."):
            continue
        d = read_json(path)
        kind = d.get("kind") if isinstance(d, dict) else None
        if kind not in ("chair", "pope", "mmhal"):
            continue  # not a metrics file (e.g. a config)
        slot = f"pope_{d.get('split')}" if kind == "pope" else kind
        if slot in origin:
            raise ValueError(f"{run_dir}: both {origin[slot]} and {path} hold {slot} metrics")
        origin[slot] = path
        if kind == "pope":
            run["pope"][d.get("split") or "all"] = d["metrics"]
            if d.get("parser"):
                run["pope_parser"][d.get("split") or "all"] = d["parser"]
        else:
            run[kind] = d["metrics"]
            if kind == "mmhal":
                run["mmhal_judge"] = {"model": d.get("judge_model"), "template": d.get("judge_template")}
    if not origin:
        raise ValueError(f"{run_dir}: no metrics JSON (chair/pope/mmhal) found")
    return run


def write_report(run_dirs: list[str], out_dir: str) -> str:
    runs = [collect_run(d) for d in run_dirs]
    splits = [s for s in (*SPLITS, "all") if any(s in r["pope"] for r in runs)]

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    head = ["run", "CHAIR_s", "CHAIR_i", "recall", "len"]
    for s in splits:
        head += [f"POPE-{s} acc", "F1", "yes"]
    mean = all(s in splits for s in SPLITS)
    if mean:
        head.append("POPE F1 mean")
    head += ["MMHal score", "MMHal hall."]
    rows, notes = [], []
    for r in runs:
        c, m = r["chair"] or {}, r["mmhal"] or {}
        name = os.path.basename(os.path.normpath(r["run"])) or r["run"]
        row = [name, pct(c.get("chair_s")), pct(c.get("chair_i")), pct(c.get("recall")),
               "–" if not c else f"{c['length']:.1f}"]
        for s in splits:
            p = r["pope"].get(s, {})
            row += [pct(p.get("accuracy")), pct(p.get("f1")), pct(p.get("yes_ratio"))]
        if mean:  # LLaVA's convention: the mean F1 of the three splits, or nothing
            row.append(pct(sum(r["pope"][s]["f1"] for s in SPLITS) / 3) if all(s in r["pope"] for s in SPLITS)
                       else "–")
        row += ["–" if m.get("score") is None else f"{m['score']:.2f}", pct(m.get("hallucination_rate"))]
        rows.append(row)
        parsers = sorted(set(r["pope_parser"].values()))
        if parsers:
            notes.append(f"- {name}: POPE answers read with the {' / '.join(parsers)}")
        if r["mmhal_judge"]:
            t = r["mmhal_judge"]["template"] or {}
            notes.append(f"- {name}: MMHal judged by {r['mmhal_judge']['model']} with the {t.get('name')} template")
    md = ["# Hallucination evaluation", "",
          "CHAIR_s, CHAIR_i, recall, POPE accuracy/F1/yes-ratio and the MMHal hallucination rate are percentages; "
          "len is words per caption; the POPE F1 mean is the mean of the three splits' F1 (LLaVA's POPE number); "
          "the MMHal score is the judge's mean 0-6 rating. – = not measured.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    if notes:
        md += [""] + notes
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "report.md")
    write_atomic(path, "\n".join(md) + "\n")
    write_json(os.path.join(out_dir, "report.json"), {"runs": runs})
    return path


def cmd_report(a) -> None:
    out = a.out or os.path.commonpath([os.path.dirname(os.path.abspath(d.rstrip("/"))) for d in a.run_dirs])
    path = write_report(a.run_dirs, out)
    with open(path, encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"-> {path} and report.json", file=sys.stderr)


def _args_report(r: argparse.ArgumentParser) -> None:
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out", default=None, help="output dir (default: the run dirs' common parent)")


COMMANDS = {"report": ("report.md + report.json over run dirs", _args_report, cmd_report)}
