"""`eval.py report`: every benchmark of every run in one table (report.md) and all their metrics (report.json), the
first run taken as the base: each later run's column is followed by its change from the base, and the published
numbers of LLaVA-1.5-7B, POVID and CLIP-DPO stand beside them, so a run can be checked against the papers at a glance.

    python eval.py report RUN_DIR... [--out DIR]     # DIR/report.md + DIR/report.json (default DIR: the runs' parent)

A run dir holds the metrics JSON the scoring commands write, {"kind": ..., "metrics": {...}, ...}; other JSON files
(configs) are passed over; two files of one kind (and POPE split) are an error. ROWS says which metrics of which kind
become rows (a new benchmark adds its kind there, and its published numbers to PUBLISHED); rates are fractions in
JSON, percent in report.md. A metrics file that says it is not comparable with published numbers ("comparable":
false, or an offline extractor / matcher) gets its rows marked "*", as does a POPE or MMHal number read with a
non-official parser or judge template. The POPE F1 mean is the mean of the three splits' F1 (LLaVA's "POPE"), shown
only when all three were scored.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

from evals.files import read_json, write_atomic, write_json
from evals.pope import SPLITS

# kind -> [(row label, metric key, format, lower is better)]; format "pct" = fraction shown as percent, "pct100" = a
# value already in percent, "f2" / "f1" = a number with 2 / 1 decimals
ROWS: dict[str, list[tuple[str, str, str, bool]]] = {
    "chair": [("CHAIR_s", "chair_s", "pct", True), ("CHAIR_i", "chair_i", "pct", True),
              ("CHAIR recall", "recall", "pct", False), ("CHAIR words per caption", "length", "f1", False)],
    "pope": [("POPE F1 mean", "f1_mean", "pct", False)] + [
        (f"POPE {s} {k}", key, "pct", lower) for s in (*SPLITS, "all")
        for k, key, lower in (("acc", f"{s}.accuracy", False), ("F1", f"{s}.f1", False),
                              ("yes ratio", f"{s}.yes_ratio", False))],
    "mmhal": [("MMHal score", "score", "f2", False), ("MMHal hallucination rate", "hallucination_rate", "pct", True)],
    "amber": [("AMBER CHAIR", "chair", "pct", True), ("AMBER Cover", "cover", "pct", False),
              ("AMBER Hal", "hal", "pct", True), ("AMBER Cog", "cog", "pct", True),
              ("AMBER accuracy", "accuracy", "pct", False), ("AMBER F1", "f1", "pct", False),
              ("AMBER existence F1", "existence_f1", "pct", False),
              ("AMBER attribute F1", "attribute_f1", "pct", False),
              ("AMBER relation F1", "relation_f1", "pct", False), ("AMBER score", "amber_score", "pct", False),
              ("AMBER yes/no answers not exactly Yes/No", "n_unparsed", "int", True)],
    "objhal": [("ObjHal response hall.", "response_hall", "pct", True),
               ("ObjHal mention hall.", "mention_hall", "pct", True)],
    "sqa": [("SQA-IMG accuracy", "img_accuracy", "pct", False), ("SQA unparseable answers", "n_failed", "int", True)],
    "mme": [("MME perception", "perception", "f1", False), ("MME cognition", "cognition", "f1", False),
            ("MME 'other' answers", "n_other", "int", True)],
}
# (kind, key) -> {model: (value in the row's format units: percent for rates, source)}
PAPERS = ("LLaVA-1.5-7B", "POVID", "CLIP-DPO")
_M = "shared/reference/mobilevlm_and_benchmarks.md"
PUBLISHED: dict[tuple[str, str], dict[str, tuple[float, str]]] = {
    ("chair", "chair_s"): {"LLaVA-1.5-7B": (66.8, "POVID paper, its own sampled protocol"),
                           "POVID": (31.8, "POVID paper")},
    ("pope", "f1_mean"): {"LLaVA-1.5-7B": (85.9, "LLaVA MODEL_ZOO"), "POVID": (86.9, "POVID paper (issue #2)")},
    ("amber", "chair"): {"LLaVA-1.5-7B": (7.8, "AMBER README"), "POVID": (5.3, "SENTINEL Tab. 1"),
                         "CLIP-DPO": (3.7, "CLIP-DPO via SENTINEL Tab. 1")},
    ("amber", "cover"): {"LLaVA-1.5-7B": (51.0, "AMBER README")},
    ("amber", "hal"): {"LLaVA-1.5-7B": (36.4, "AMBER README"), "POVID": (28.7, "SENTINEL Tab. 1"),
                       "CLIP-DPO": (16.6, "CLIP-DPO via SENTINEL Tab. 1")},
    ("amber", "cog"): {"LLaVA-1.5-7B": (4.2, "AMBER README"), "POVID": (3.0, "SENTINEL Tab. 1"),
                       "CLIP-DPO": (1.3, "CLIP-DPO via SENTINEL Tab. 1")},
    ("amber", "accuracy"): {"LLaVA-1.5-7B": (72.0, "AMBER README")},
    ("amber", "f1"): {"LLaVA-1.5-7B": (74.7, "AMBER README")},
    ("amber", "existence_f1"): {"LLaVA-1.5-7B": (82.4, "SENTINEL Tab. 14")},
    ("amber", "attribute_f1"): {"LLaVA-1.5-7B": (64.0, "SENTINEL Tab. 14")},
    ("amber", "relation_f1"): {"LLaVA-1.5-7B": (67.7, "SENTINEL Tab. 14")},
    ("amber", "amber_score"): {"LLaVA-1.5-7B": (83.45, "AMBER README: (100 - 7.8 + 74.7) / 2")},
    ("objhal", "response_hall"): {"LLaVA-1.5-7B": (52.7, "SENTINEL Tab. 1"), "POVID": (33.4, "SENTINEL Tab. 1")},
    ("objhal", "mention_hall"): {"LLaVA-1.5-7B": (28.0, "SENTINEL Tab. 1"), "POVID": (16.6, "SENTINEL Tab. 1")},
    ("sqa", "img_accuracy"): {"LLaVA-1.5-7B": (66.8, "LLaVA MODEL_ZOO"), "POVID": (68.8, "SENTINEL Tab. 1"),
                              "CLIP-DPO": (67.6, "CLIP-DPO via SENTINEL Tab. 1")},
    ("mme", "perception"): {"LLaVA-1.5-7B": (1510.7, "LLaVA MODEL_ZOO"), "POVID": (1452.8, "CSR Tab. 1")},
}


def _not_comparable(kind: str, d: dict) -> str | None:
    """Why a metrics file's numbers do not compare with published ones, or None."""
    if d.get("comparable") is False:
        return d.get("matcher") or "marked not comparable"
    ex = d.get("extractor")
    if isinstance(ex, dict) and ex.get("comparable") is False:
        return f"objects by {ex.get('name')}"
    if kind == "pope" and d.get("parser") and not str(d["parser"]).startswith("official"):
        return f"POPE answers read with the {d['parser']}"
    if kind == "mmhal" and (d.get("judge_template") or {}).get("name") not in (None, "official"):
        return f"judged with the {d['judge_template']['name']} template"
    return None


def _scored_with(kind: str, d: dict) -> str | None:
    """How a metrics file was scored, where a benchmark has more than one way (parser, judge, matcher)."""
    if kind == "pope" and d.get("parser"):
        return f"POPE answers read with the {d['parser']}"
    if kind == "mmhal":
        return f"MMHal judged by {d.get('judge_model')} with the {(d.get('judge_template') or {}).get('name')} template"
    if kind == "amber" and d.get("matcher"):
        return f"AMBER nouns: {d['matcher']}"
    if kind == "objhal" and isinstance(d.get("extractor"), dict):
        return f"Object HalBench objects by {d['extractor'].get('name')}"
    return None


def collect_run(run_dir: str) -> dict:
    """{"run", "metrics": {kind: flat metrics}, "notes": [...], "chair", "pope": {split: metrics}, "mmhal"} (the last
    three as the toy report reads them)."""
    run: dict = {"run": run_dir, "metrics": {}, "notes": {}, "scored": {}, "chair": None, "pope": {}, "mmhal": None}
    origin: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "*.json"))):
        if os.path.basename(path).startswith("report."):
            continue
        d = read_json(path)
        kind = d.get("kind") if isinstance(d, dict) else None
        if kind not in ROWS:
            continue  # not a metrics file (e.g. a config)
        slot = f"pope_{d.get('split')}" if kind == "pope" else kind
        if slot in origin:
            raise ValueError(f"{run_dir}: both {origin[slot]} and {path} hold {slot} metrics")
        origin[slot] = path
        why = _not_comparable(kind, d)
        how = _scored_with(kind, d)
        if how:
            run["scored"][kind] = how
        if why:
            run["notes"][kind] = why
        if kind == "pope":
            split = d.get("split") or "all"
            run["pope"][split] = d["metrics"]
            flat = run["metrics"].setdefault("pope", {})
            flat.update({f"{split}.{k}": v for k, v in d["metrics"].items()})
        else:
            run["metrics"][kind] = d["metrics"]
            if kind in ("chair", "mmhal"):
                run[kind] = d["metrics"]
    if not origin:
        raise ValueError(f"{run_dir}: no metrics JSON ({', '.join(ROWS)}) found")
    if all(s in run["pope"] for s in SPLITS):
        run["metrics"]["pope"]["f1_mean"] = sum(run["pope"][s]["f1"] for s in SPLITS) / 3
    return run


def _fmt(v, how: str) -> str:
    if v is None:
        return "–"
    return {"pct": f"{100 * v:.1f}", "pct100": f"{v:.1f}", "f2": f"{v:.2f}", "f1": f"{v:.1f}",
            "int": f"{v:d}" if isinstance(v, int) else f"{v}"}[how]


def _delta(v, base, how: str, lower: bool) -> str:
    if v is None or base is None or how == "int":
        return ""
    d = (v - base) * (100 if how == "pct" else 1)
    better = (d < 0) == lower if d else None
    return f"{d:+.{2 if how == 'f2' else 1}f}" + ("" if better is None else " ✓" if better else " ✗")


def write_report(run_dirs: list[str], out_dir: str) -> str:
    runs = [collect_run(d) for d in run_dirs]
    names = [os.path.basename(os.path.normpath(r["run"])) or r["run"] for r in runs]
    head = ["benchmark", names[0]]
    for n in names[1:]:
        head += [n, f"change vs {names[0]}"]
    head += [f"published {p}" for p in PAPERS]
    rows, sources = [], []
    for kind, spec in ROWS.items():
        for label, key, how, lower in spec:
            vals = [r["metrics"].get(kind, {}).get(key) for r in runs]
            if all(v is None for v in vals):
                continue
            mark = "*" if any(kind in r["notes"] for r in runs) else ""
            row = [label + mark, _fmt(vals[0], how)]
            for v in vals[1:]:
                row += [_fmt(v, how), _delta(v, vals[0], how, lower)]
            pub = PUBLISHED.get((kind, key), {})
            for p in PAPERS:
                row.append(f"{pub[p][0]:g}" if p in pub else "")
            sources += [f"{label} {p}: {pub[p][1]}" for p in PAPERS if p in pub]
            rows.append(row)
    notes = [f"- {n}: {kind}: {why}" for n, r in zip(names, runs) for kind, why in r["notes"].items()]
    scored = [f"- {n}: {how}" for n, r in zip(names, runs) for how in r["scored"].values()]
    md = ["# Evaluation report", "",
          "Rates in percent; the change is the later run minus the first, in the row's units (✓ better, ✗ worse); "
          "published numbers are LLaVA-1.5-7B's and the methods' on it, each under its paper's protocol (sources "
          "below and in recipes/eval.toml). – = not measured; * = not comparable with the published numbers "
          "(notes).", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    if notes:
        md += ["", "Not comparable:"] + notes
    if scored:
        md += ["", "Scored with:"] + list(dict.fromkeys(scored))
    if sources:
        md += ["", "Published numbers: " + "; ".join(dict.fromkeys(sources)) + "."]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "report.md")
    write_atomic(path, "\n".join(md) + "\n")
    write_json(os.path.join(out_dir, "report.json"),
               {"runs": runs, "published": {f"{k}.{m}": v for (k, m), v in PUBLISHED.items()}})
    return path


def cmd_report(a) -> None:
    out = a.out or os.path.commonpath([os.path.dirname(os.path.abspath(d.rstrip("/"))) for d in a.run_dirs])
    path = write_report(a.run_dirs, out)
    with open(path, encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"-> {path} and report.json", file=sys.stderr)


def _args_report(r: argparse.ArgumentParser) -> None:
    r.add_argument("run_dirs", nargs="+", help="run dirs; the first is the base the others are compared with")
    r.add_argument("--out", default=None, help="output dir (default: the run dirs' common parent)")


COMMANDS = {"report": ("report.md + report.json over run dirs, beside the published numbers", _args_report,
                       cmd_report)}
