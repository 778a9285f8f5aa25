"""The toy-world demo's report: out/toy/report.md, report.json, curves.png and examples.png from the evaluated runs.

What it shows, in order: each method at its selected checkpoint on the test scenes against the baseline; the targets
checked on those numbers (toy/selection.py), each verdict line naming the host, the seed and the checkpoint it comes
from; the selection itself (every checkpoint's validation numbers, the one taken); POVID against each control at
equal validation recall; curves.png (toy/figure.py); then the test changes with 95% paired-bootstrap intervals over
the scenes (toy/bootstrap.py) and two tables of the mechanism: how often each scene's companion objects are named when
absent and when drawn, and recall by the object's role in its scene (anchor, companion, extra). toy/demo.py calls
write_report() at the end of the pipeline:

    python -m toy.demo [--quick] [--seed S]
"""
from __future__ import annotations

import functools
import json
import os
import platform
from collections import Counter

from toy import evaluation, selection
from model.files import read_json, write_atomic
from toy.figure import curves_png


def host() -> dict:
    """Where the numbers come from: the same commands give another model on another CPU (its float kernels round
    differently, and 1,500 SFT steps amplify that), so every verdict names the host."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "node": platform.node()}


def write_report(pl, made, wall, load_start) -> dict:
    """made: toy/demo.py declare()'s {curves, val, test, selected} -> the report (also written to report.json)."""
    from toy.bootstrap import paired_intervals
    sel = {m: read_json(made["selected"][m].path) for m in selection.METHODS}
    curves = {m: sel[m]["curve"] for m in selection.METHODS}
    chosen = {m: sel[m]["selected"] for m in selection.METHODS}
    val_base = curves["povid"][0]
    test_dirs = {name: o.path for name, o in made["test"].items()}
    res = {name: evaluation.summarise(d) for name, d in test_dirs.items()}
    equal = selection.equal_recall(curves, chosen["povid"])
    where = host()
    where_text = f"host {where['cpu']} x{where['cores']}, seed {pl.seed}"
    lines_v, met = selection.verdicts(res, chosen, val_base, equal, where_text)
    last = {m: curves[m][-1]["step"] for m in selection.METHODS}
    report = {**res, "smoke_run": pl.quick, "split": "test", "n_test_images": pl.p["n_test"], "n_val_images": pl.p["n_val"],
              "seed": pl.seed, "host": where, "wall_s": round(wall, 1), "stages_reused": pl.reused,
              "stage_seconds": pl.seconds, "load_avg": {"start": list(load_start), "end": list(os.getloadavg())},
              "guards": selection.GUARDS, "targets": selection.TARGETS, "verdicts": lines_v, "met": met,
              "validation": {"baseline": val_base, "curves": curves}, "equal_recall": equal}
    for m in selection.METHODS:
        report[m].update(step=chosen[m]["step"], last_step=last[m], checkpoint=chosen[m]["checkpoint"])
    when = (f"wall time of the whole pipeline {wall / 60:.1f} min" if not pl.reused else
            f"wall time of this invocation {wall / 60:.1f} min, {len(pl.reused)} of "
            f"{len(pl.reused) + len(pl.ran)} stages reused from an earlier run (not a whole-pipeline time)")
    la = report["load_avg"]
    b = res["baseline"]
    lines = ["# Toy world: hallucination before and after preference tuning" + (" - a smoke run" if pl.quick else ""),
             ""]
    if pl.quick:  # a reader who ran `make demo-quick` must not take these for the demo's results
        lines += [f"**A smoke run (`--quick`)**: {pl.p['n_test']} test scenes and a few steps per stage check that "
                  "every stage runs; its numbers say nothing about the methods. `make demo` gives the real ones.", ""]
    lines += [f"{pl.p['n_test']} held-out test scenes; {where_text}; {when} (load average {la['start'][0]:.2f} at the "
             f"start, {la['end'][0]:.2f} at the end). Each method at the checkpoint the selection took on the "
             f"{pl.p['n_val']} validation scenes (step of its last); rates in %, CHAIR_i change relative to the "
             "baseline.", "",
             "| run | checkpoint | CHAIR_s | CHAIR_i | CHAIR_i vs base | recall | len | POPE F1 (mean) | POPE yes-ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        rel = f"{100 * (r['chair_i'] / b['chair_i'] - 1):+.1f}%" if b["chair_i"] else "–"
        step = f"{chosen[name]['step']} of {last[name]}" if name in chosen else "–"
        lines.append(f"| {name} | {step} | {100 * r['chair_s']:.1f} | {100 * r['chair_i']:.1f} | {rel} | "
                     f"{100 * r['recall']:.1f} | {r['length']:.1f} | {100 * r['pope_f1']:.1f} | "
                     f"{100 * r['pope_yes_ratio']:.1f} |")
    lines += ["", "Targets, on this seed alone (the claim is their mean over three SFT seeds: `make demo-seeds`):",
              *[f"- {v}" for v in lines_v]]
    lines += ["", "## The selection (validation scenes)", "",
              f"The rule (toy/selection.py), the same for every run: the last checkpoint along training whose "
              f"validation recall is at most {100 * selection.GUARDS['recall']:.0f} points and POPE F1 at most "
              f"{100 * selection.GUARDS['pope_f1']:.1f} points below the baseline's (step 0 = the baseline itself "
              f"when none is). Validation baseline: CHAIR_i {100 * val_base['chair_i']:.1f}, recall "
              f"{100 * val_base['recall']:.1f}, POPE F1 {100 * val_base['pope_f1']:.1f}. POVID and injection_only share "
              f"stage 1 (steps 1-{pl.p['stage1_steps']}); their later steps are stage 2.", "",
              "| run | step | CHAIR_i | CHAIR_i vs base | recall change | POPE F1 change | within the guards |",
              "|---|---|---|---|---|---|---|"]
    for m in selection.METHODS:
        for pt in curves[m][1:]:
            mark = "**" if pt["step"] == chosen[m]["step"] else ""
            lines.append(f"| {mark}{m}{mark} | {mark}{pt['step']}{mark} | {100 * pt['chair_i']:.1f} | "
                         f"{100 * (pt['chair_i'] / val_base['chair_i'] - 1):+.1f}% | "
                         f"{100 * (pt['recall'] - val_base['recall']):+.1f} | "
                         f"{100 * (pt['pope_f1'] - val_base['pope_f1']):+.1f} | {'yes' if pt['within_guards'] else 'no'} |")
    lines += ["", "POVID against each run at equal validation recall (CHAIR_i read off each curve by linear "
              "interpolation where its recall first falls to the recall of POVID's selected checkpoint, or to the "
              "lowest the other run reaches):", "",
              "| run | at recall | its CHAIR_i | POVID's CHAIR_i | POVID ahead |", "|---|---|---|---|---|"]
    for m, e in equal.items():
        f = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
        lines.append(f"| {m} | {100 * e['recall']:.1f} | {f(e['control'])} | {f(e['povid'])} | "
                     f"{'–' if e['ahead'] is None else 'yes' if e['ahead'] else 'no'} |")
    panel = {"title": f"seed {pl.seed} (validation)", "base": val_base, "curves": curves,
             "selected": {m: chosen[m]["step"] for m in chosen}}
    curves_png(pl.path("curves.png"), [panel])
    lines += ["", "![CHAIR_i against recall along training](curves.png)"]
    # the pretrained tower's own quality, before any SFT
    report["vision_tagging_auc"] = read_json(pl.path("vision", "metrics.json"))["mean_auc"]
    lines += ["", f"The vision tower (toy/pretrain_vision.py, frozen through SFT) tags the validation scenes' objects with "
              f"AUC {report['vision_tagging_auc']:.3f} (present vs absent, mean over categories).", ""]
    lines += ["## The test changes, the mechanism", "",
              f"Changes against the baseline with 95% paired-bootstrap intervals over the {pl.p['n_test']} scenes "
              "(toy/bootstrap.py: the scenes' sampling noise only; another training seed moves the numbers more):", "",
              "| run | CHAIR_i vs base | CHAIR_s change | recall change | POPE F1 change |", "|---|---|---|---|---|"]
    for name, rd in test_dirs.items():
        if name == "baseline":
            continue
        ci = paired_intervals(test_dirs["baseline"], rd)  # {stat: (change, low, high)}
        report[name]["vs_baseline"] = {k: {"change": c, "ci95": [lo, hi]} for k, (c, lo, hi) in ci.items()}
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * c:+.1f}{'%' if k == 'chair_i_rel' else ''} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            for k, (c, lo, hi) in ci.items()) + " |")
    lines += ["", "Companion objects named in the captions (% of cases), by whether they are in the image:", "",
              "| run | absent (= hallucinated) | present, clear | present, faint | present, covered |",
              "|---|---|---|---|---|"]
    for name, rd in test_dirs.items():
        m = report[name]["companions_named"] = companion_mentions(pl.world, rd)
        lines.append(f"| {name} | " + " | ".join(f"{100 * m.get(k, 0):.0f}" for k in
                                                 ("absent", "clear", "faint", "covered")) + " |")
    lines += ["", "Recall by the object's role in its scene (%), and the share of hallucinated mentions that are an "
              "absent companion:", "", "| run | anchor | companion | extra (never faint or covered) | hallucinations that "
              "are absent companions |", "|---|---|---|---|---|"]
    for name, rd in test_dirs.items():
        m = report[name]["recall_by_role"] = recall_by_role(pl.world, rd)
        lines.append(f"| {name} | " + " | ".join(f"{100 * m[k]:.0f}" if k in m else "–" for k in
                                                 ("anchor", "companion", "extra", "hallucinations_absent_companion"))
                     + " |")
    examples = examples_png(pl.world, test_dirs, pl.path("examples.png"))
    lines += ["", "![test scenes where the baseline hallucinated most](examples.png)"]
    write_atomic(pl.path("report.json"), json.dumps(report, indent=2))
    write_atomic(pl.path("report.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"curves: {pl.path('curves.png')}\nexamples: {examples}")
    return report


@functools.lru_cache(maxsize=4)
def _scenes(world, split):
    """(the split's annotations, scene -> [anchor, companions...]): read once per report, not once per run and table."""
    return (read_json(os.path.join(world, f"{split}_annotations.json")),
            read_json(os.path.join(world, "vocab.json"))["cooccurrence"])


def _captions(world, run_dir):
    """Per test scene: (its annotation, [anchor, companions...] of its scene type, CHAIR's per-caption entry)."""
    anns, cooc = _scenes(world, "test")
    per = read_json(os.path.join(run_dir, "chair.json"))["per_caption"]
    return [(anns[iid], cooc[anns[iid]["scene"]], d) for iid, d in per.items()]


def companion_mentions(world, run_dir) -> dict:
    """How often each scene's companion objects (fork for a table, ...) are named in the captions, split by whether
    the companion is in the image: absent (every such mention is a hallucination) or present clearly / faintly /
    partly covered. A model that reads the image names present ones far more often than absent ones; one that
    leans on the scene prior names both at about the prior's rate."""
    n, said = Counter(), Counter()
    for ann, cooc, d in _captions(world, run_dir):
        inst = {i["category"]: i for i in ann["instances"]}
        for obj in cooc[1:]:
            i = inst.get(obj)
            k = "absent" if i is None else "faint" if i["faint"] else "covered" if i["occluded"] else "clear"
            n[k] += 1
            said[k] += obj in d["mentioned"]
    return {k: said[k] / n[k] for k in ("absent", "clear", "faint", "covered") if n[k]}


def recall_by_role(world, run_dir) -> dict:
    """Recall split by the object's role in its scene: the anchor (always there), companions (usually there) and
    extras (15% each, never faint or covered, so always plain to see), plus the share of hallucinated mentions that
    are an absent companion of the scene. A model that captions from the scene type names every anchor, the
    companions by their prior and no extras, however clearly drawn; every hallucination is then a companion."""
    n, named, hall, comp = Counter(), Counter(), 0, 0
    for ann, cooc, d in _captions(world, run_dir):
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


def examples_png(world, run_dirs, path, names=("baseline", "povid", "clip_dpo"), n=8):
    """A grid of test scenes, each with its captions from several runs (at their selected checkpoints);
    hallucinated words in red."""
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default()
    per = {name: read_json(os.path.join(run_dirs[name], "chair.json"))["per_caption"] for name in names}
    texts = {name: _answers(run_dirs[name]) for name in names}  # read once, not once per scene
    anns = read_json(os.path.join(world, "test_annotations.json"))
    base = per[names[0]]
    # show scenes where the baseline hallucinated first: that is what the tuning is meant to fix
    ids = sorted(base, key=lambda i: (-len(base[i]["hallucinated"]), i))[:n]
    W, S, line_h = 560, 128, 13
    canvas = Image.new("RGB", (W * 2, (S + 8 + line_h * 2 * len(names)) * ((n + 1) // 2)), "white")
    d = ImageDraw.Draw(canvas)
    for k, iid in enumerate(ids):
        x0, y0 = (k % 2) * W, (k // 2) * (S + 8 + line_h * 2 * len(names))
        img = Image.open(os.path.join(world, anns[iid]["image"])).convert("RGB").resize((S, S), Image.NEAREST)
        canvas.paste(img, (x0 + 4, y0 + 4))
        d.text((x0 + S + 10, y0 + 6), "truth: " + ", ".join(sorted(set(anns[iid]["objects"]))), fill=(0, 110, 0),
               font=font)
        for j, name in enumerate(names):  # two lines per caption, cut with "..." beyond that
            bad = {w for h in per[name][iid].get("hallucinated_words", []) for w in h.split()}
            x, y, row = x0 + 74, y0 + S + 8 + j * 2 * line_h, 0
            d.text((x0 + 4, y), f"{name}:", fill=(0, 0, 0), font=font)
            text = texts[name][iid]
            for word in text.split():
                w = d.textlength(word, font=font) + 5  # the default font's space is 2 px: words ran together
                if x + w > x0 + W - 14:
                    if row == 1:
                        d.text((x, y), "...", fill=(0, 0, 0), font=font)
                        break
                    x, y, row = x0 + 74, y + line_h, 1
                d.text((x, y), word, fill=(210, 0, 0) if word.strip(".,") in bad else (0, 0, 0), font=font)
                x += w
    canvas.save(path)
    return path


def _answers(run_dir) -> dict:
    """{image_id: the caption} of a run's CHAIR answers."""
    with open(os.path.join(run_dir, "chair_answers.jsonl")) as f:
        return {str(a.get("image_id")): a["text"] for a in map(json.loads, filter(str.strip, f))}
