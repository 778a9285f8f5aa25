"""The toy-world demo's report: out/toy/report.md, report.json and examples.png from the evaluated runs.

Each run's CHAIR and POPE numbers (eval.py's metrics files) against the baseline, with 95% paired-bootstrap
intervals over the scenes (toy/bootstrap.py), the issue's targets checked on them, and two tables of the mechanism: how
often each scene's companion objects are named when absent and when drawn, and recall by the object's role in its
scene (anchor, companion, extra). toy/demo.py calls write_report() at the end of the pipeline:

    python -m toy.demo [--quick] [--eval-split val]      (writes the report of that split's evaluations)
"""
from __future__ import annotations

import functools
import json
import os
from collections import Counter


def summarise(run_dir) -> dict:
    """The issue's per-run keys from eval.py's metrics files."""
    from eval import collect_run
    r = collect_run(run_dir)
    c, pope = r["chair"], r["pope"]
    f1 = [pope[s]["f1"] for s in ("random", "popular", "adversarial")]
    yes = [pope[s]["yes_ratio"] for s in ("random", "popular", "adversarial")]
    return {"chair_s": c["chair_s"], "chair_i": c["chair_i"], "recall": c["recall"], "length": c["length"],
            "pope_f1": sum(f1) / 3, "pope_yes_ratio": sum(yes) / 3,
            **{f"pope_f1_{s}": pope[s]["f1"] for s in ("random", "popular", "adversarial")}}


@functools.lru_cache(maxsize=4)
def _scenes(world, split):
    """(the split's annotations, scene -> [anchor, companions...]): read once per report, not once per run and table."""
    with open(os.path.join(world, f"{split}_annotations.json")) as f:
        anns = json.load(f)
    with open(os.path.join(world, "vocab.json")) as f:
        return anns, json.load(f)["cooccurrence"]


def _captions(pl, run_dir):
    """Per evaluated scene: (its annotation, [anchor, companions...] of its scene type, CHAIR's per-caption entry)."""
    anns, cooc = _scenes(pl.world, pl.split)
    with open(os.path.join(run_dir, "chair.json")) as f:
        per = json.load(f)["per_caption"]
    return [(anns[iid], cooc[anns[iid]["scene"]], d) for iid, d in per.items()]


def companion_mentions(pl, run_dir) -> dict:
    """How often each scene's companion objects (fork for a table, ...) are named in the captions, split by whether
    the companion is in the image: absent (every such mention is a hallucination) or present clearly / faintly /
    partly covered. A model that reads the image names present ones far more often than absent ones; one that
    leans on the scene prior names both at about the prior's rate."""
    n, said = Counter(), Counter()
    for ann, cooc, d in _captions(pl, run_dir):
        inst = {i["category"]: i for i in ann["instances"]}
        for obj in cooc[1:]:
            i = inst.get(obj)
            k = "absent" if i is None else "faint" if i["faint"] else "covered" if i["occluded"] else "clear"
            n[k] += 1
            said[k] += obj in d["mentioned"]
    return {k: said[k] / n[k] for k in ("absent", "clear", "faint", "covered") if n[k]}


def recall_by_role(pl, run_dir) -> dict:
    """Recall split by the object's role in its scene: the anchor (always there), companions (usually there) and
    extras (15% each, never faint or covered, so always plain to see), plus the share of hallucinated mentions that
    are an absent companion of the scene. A model that captions from the scene type names every anchor, the
    companions by their prior and no extras, however clearly drawn; every hallucination is then a companion."""
    n, named, hall, comp = Counter(), Counter(), 0, 0
    for ann, cooc, d in _captions(pl, run_dir):
        for obj in set(ann["objects"]):
            role = "anchor" if obj == cooc[0] else "companion" if obj in cooc[1:] else "extra"
            n[role] += 1
            named[role] += obj in d["mentioned"]
        hall += len(d["hallucinated"])
        comp += sum(h in cooc[1:] for h in d["hallucinated"])
    out = {r: named[r] / n[r] for r in ("anchor", "companion", "extra") if n[r]}  # a role no scene holds: no rate
    if hall:  # no hallucinations: no share either
        out["hallucinations_absent_companion"] = comp / hall
    return out


def verdicts(res) -> list[str]:
    """The issue's targets, checked on the measured numbers (printed, never tuned)."""
    b = res["baseline"]
    out = [f"baseline CHAIR_i {100 * b['chair_i']:.1f}% (target 10-40%), recall {100 * b['recall']:.1f}% "
           f"(target >= 60%): {'met' if 0.10 <= b['chair_i'] <= 0.40 and b['recall'] >= 0.60 else 'MISSED'}"]
    for name, need in (("povid", 0.30), ("clip_dpo", 0.15)):
        r = res[name]
        rel = 1 - r["chair_i"] / b["chair_i"] if b["chair_i"] else 0.0
        ok = (rel >= need and r["chair_s"] < b["chair_s"] and b["recall"] - r["recall"] <= 0.03
              and r["pope_f1"] >= b["pope_f1"] - 0.005)
        out.append(f"{name}: CHAIR_i -{100 * rel:.1f}% relative (target >= {100 * need:.0f}%), CHAIR_s "
                   f"{100 * b['chair_s']:.1f} -> {100 * r['chair_s']:.1f}, recall {100 * b['recall']:.1f} -> "
                   f"{100 * r['recall']:.1f}, POPE F1 {100 * b['pope_f1']:.1f} -> {100 * r['pope_f1']:.1f}: "
                   f"{'met' if ok else 'MISSED'}")
    return out


def examples_png(pl, run_dirs, names=("baseline", "povid", "clip_dpo"), n=8):
    """A grid of held-out scenes, each with its captions from several runs; hallucinated words in red."""
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default()
    per = {}
    for name in names:
        with open(os.path.join(run_dirs[name], "chair.json")) as f:
            per[name] = json.load(f)["per_caption"]
    with open(os.path.join(pl.world, f"{pl.split}_annotations.json")) as f:
        anns = json.load(f)
    base = per[names[0]]
    # show scenes where the baseline hallucinated first: that is what the tuning is meant to fix
    ids = sorted(base, key=lambda i: (-len(base[i]["hallucinated"]), i))[:n]
    W, S, line_h = 560, 128, 13
    canvas = Image.new("RGB", (W * 2, (S + 8 + line_h * 2 * len(names)) * ((n + 1) // 2)), "white")
    d = ImageDraw.Draw(canvas)
    for k, iid in enumerate(ids):
        x0, y0 = (k % 2) * W, (k // 2) * (S + 8 + line_h * 2 * len(names))
        img = Image.open(os.path.join(pl.world, anns[iid]["image"])).convert("RGB").resize((S, S), Image.NEAREST)
        canvas.paste(img, (x0 + 4, y0 + 4))
        d.text((x0 + S + 10, y0 + 6), "truth: " + ", ".join(sorted(set(anns[iid]["objects"]))), fill=(0, 110, 0),
               font=font)
        for j, name in enumerate(names):  # two lines per caption, cut with "..." beyond that
            bad = {w for h in per[name][iid].get("hallucinated_words", []) for w in h.split()}
            x, y, row = x0 + 74, y0 + S + 8 + j * 2 * line_h, 0
            d.text((x0 + 4, y), f"{name}:", fill=(0, 0, 0), font=font)
            text = next(a["text"] for a in _answers(run_dirs[name]) if str(a.get("image_id")) == iid)
            for word in text.split():
                w = d.textlength(word, font=font) + 5  # the default font's space is 2 px: words ran together
                if x + w > x0 + W - 14:
                    if row == 1:
                        d.text((x, y), "...", fill=(0, 0, 0), font=font)
                        break
                    x, y, row = x0 + 74, y + line_h, 1
                d.text((x, y), word, fill=(210, 0, 0) if word.strip(".,") in bad else (0, 0, 0), font=font)
                x += w
    path = os.path.join(pl.out, f"examples{pl.suffix}.png")
    canvas.save(path)
    return path


def _answers(run_dir):
    with open(os.path.join(run_dir, "chair_answers.jsonl")) as f:
        return [json.loads(x) for x in f if x.strip()]


def write_report(pl, run_dirs, wall):
    from toy.bootstrap import paired_intervals
    res = {name: summarise(rd) for name, rd in run_dirs.items()}
    n = pl.p["n_" + pl.split]
    report = {**res, "wall_s": round(wall, 1), "split": pl.split, f"n_{pl.split}_images": n,
              "seed": pl.seed, "stages_reused": pl.reused}
    when = (f"wall time of the whole pipeline {wall / 60:.1f} min" if not pl.reused else
            f"wall time of this invocation {wall / 60:.1f} min, {len(pl.reused)} of "
            f"{len(pl.reused) + len(pl.ran)} stages reused from an earlier run (not a whole-pipeline time)")
    b = res["baseline"]
    lines = ["# Toy world: hallucination before and after preference tuning", "",
             f"{n} held-out {'test' if pl.split == 'test' else 'validation'} scenes; {when} (2-core CPU). Rates in %; CHAIR_i change is relative to "
             "the baseline.", "",
             "| run | CHAIR_s | CHAIR_i | CHAIR_i vs base | recall | len | POPE F1 (mean) | POPE yes-ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        rel = f"{100 * (r['chair_i'] / b['chair_i'] - 1):+.1f}%" if b["chair_i"] else "–"
        lines.append(f"| {name} | {100 * r['chair_s']:.1f} | {100 * r['chair_i']:.1f} | {rel} | "
                     f"{100 * r['recall']:.1f} | {r['length']:.1f} | {100 * r['pope_f1']:.1f} | "
                     f"{100 * r['pope_yes_ratio']:.1f} |")
    lines += ["", "Targets:", *[f"- {v}" for v in verdicts(res)]]
    with open(pl.path("vision", "metrics.json")) as f:  # the pretrained tower's own quality, before any SFT
        report["vision_tagging_auc"] = json.load(f)["mean_auc"]
    lines += ["", f"The vision tower (toy/pretrain_vision.py, frozen through SFT) tags the validation scenes' objects with "
              f"AUC {report['vision_tagging_auc']:.3f} (present vs absent, mean over categories)."]
    lines += ["", f"Changes against the baseline with 95% paired-bootstrap intervals over the {n} scenes (toy/bootstrap.py: "
              "the scenes' sampling noise only; another training seed moves the numbers more):", "",
              "| run | CHAIR_i vs base | CHAIR_s change | recall change | POPE F1 change |", "|---|---|---|---|---|"]
    for name, rd in run_dirs.items():
        if name == "baseline":
            continue
        ci = paired_intervals(run_dirs["baseline"], rd)  # {stat: (change, low, high)}
        report[name]["vs_baseline"] = {k: {"change": c, "ci95": [lo, hi]} for k, (c, lo, hi) in ci.items()}
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * c:+.1f}{'%' if k == 'chair_i_rel' else ''} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            for k, (c, lo, hi) in ci.items()) + " |")
    lines += ["", "Companion objects named in the captions (% of cases), by whether they are in the image:", "",
              "| run | absent (= hallucinated) | present, clear | present, faint | present, covered |",
              "|---|---|---|---|---|"]
    for name, rd in run_dirs.items():
        m = report[name]["companions_named"] = companion_mentions(pl, rd)
        lines.append(f"| {name} | " + " | ".join(f"{100 * m.get(k, 0):.0f}" for k in
                                                 ("absent", "clear", "faint", "covered")) + " |")
    lines += ["", "Recall by the object's role in its scene (%), and the share of hallucinated mentions that are an "
              "absent companion:", "", "| run | anchor | companion | extra (never faint or covered) | hallucinations that "
              "are absent companions |", "|---|---|---|---|---|"]
    for name, rd in run_dirs.items():
        m = report[name]["recall_by_role"] = recall_by_role(pl, rd)
        lines.append(f"| {name} | " + " | ".join(f"{100 * m[k]:.0f}" if k in m else "–" for k in
                                                 ("anchor", "companion", "extra", "hallucinations_absent_companion"))
                     + " |")
    tmp = os.path.join(pl.out, f"report{pl.suffix}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, os.path.join(pl.out, f"report{pl.suffix}.json"))
    with open(os.path.join(pl.out, f"report{pl.suffix}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"examples: {examples_png(pl, run_dirs)}")
