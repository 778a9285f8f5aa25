"""The toy demo's picture: CHAIR_i against recall along training, one line per method, on the validation scenes.

Each line starts at the baseline (the SFT model, a black square) and runs through the method's saved checkpoints in
training order (dots every export_every steps); the ring is the checkpoint the selection took (toy/selection.py), the
dashed line the recall guard (3 points below the baseline). Down and to the right is better: fewer hallucinated
objects for the same recall. A guard samples one point of each line; the line shows the whole trade-off.

Drawn with PIL, the runtime's image package (no plotting package is among the runtime dependencies):

    curves_png("out/toy/curves.png", [panel])      # panel = {"title", "base", "curves", "selected"}, see draw_panel
"""
from __future__ import annotations

import math

from toy.selection import GUARDS, METHODS

COLORS = {"povid": (205, 30, 40), "injection_only": (235, 140, 20), "noise_only": (40, 110, 200),
          "nll_only": (130, 130, 130), "clip_dpo": (30, 150, 70)}
W, H = 560, 430  # one panel, in pixels
LEFT, RIGHT, TOP, BOTTOM = 62, 18, 34, 52  # plot margins: axis labels left and below, the title above


def curves_png(path, panels, legend=True):
    """Panels side by side (one per seed in toy/seeds.py), a legend below them -> the PNG at `path`."""
    from PIL import Image, ImageDraw
    width, f = W * len(panels), _font(13)
    items = [(name, "line") for name in METHODS] + [("baseline", "square"),
                                                     ("selected: the last checkpoint within the guards", "ring")]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows, x = [[]], 14  # the legend flows into rows that fit the width
    for name, mark in items:
        w = 34 + int(measure.textlength(name, font=f)) + 18
        if x + w > width and rows[-1]:
            rows.append([])
            x = 14
        rows[-1].append((x, name, mark))
        x += w
    legend_h = 24 * len(rows) + 8 if legend else 0
    img = Image.new("RGB", (width, H + legend_h), "white")
    d = ImageDraw.Draw(img)
    for k, panel in enumerate(panels):
        draw_panel(d, k * W, 0, panel)
    for r, row in enumerate(rows if legend else []):
        y = H + 6 + 24 * r
        for x, name, mark in row:
            if mark == "line":
                d.line([(x, y + 8), (x + 24, y + 8)], fill=COLORS[name], width=3)
            elif mark == "square":
                d.rectangle([x + 7, y + 3, x + 17, y + 13], fill=(0, 0, 0))
            else:
                d.ellipse([x + 5, y + 1, x + 19, y + 15], outline=(0, 0, 0), width=2)
            d.text((x + 32, y), name, fill=(0, 0, 0), font=f)
    img.save(path)
    return path


def draw_panel(d, x0, y0, panel):
    """One plot at (x0, y0). panel: {"title": str, "base": {recall, chair_i}, "curves": {method: [{step, recall,
    chair_i}, ...]} (each from the baseline on, in training order), "selected": {method: step}}; rates as fractions."""
    pts = [panel["base"]] + [pt for c in panel["curves"].values() for pt in c]
    guard = panel["base"]["recall"] - GUARDS["recall"]
    xs = _ticks(min(min(p["recall"] for p in pts), guard), max(p["recall"] for p in pts))
    ys = _ticks(min(p["chair_i"] for p in pts), max(p["chair_i"] for p in pts))
    px0, px1, py0, py1 = x0 + LEFT, x0 + W - RIGHT, y0 + TOP, y0 + H - BOTTOM

    def at(pt):  # data (fractions) -> pixels: recall along x, CHAIR_i up
        return (px0 + (pt["recall"] - xs[0]) / (xs[-1] - xs[0]) * (px1 - px0),
                py1 - (pt["chair_i"] - ys[0]) / (ys[-1] - ys[0]) * (py1 - py0))

    grey, black, f = (225, 225, 225), (0, 0, 0), _font(12)
    for v in xs:  # grid and tick labels, in percent
        x = at({"recall": v, "chair_i": ys[0]})[0]
        d.line([(x, py0), (x, py1)], fill=grey)
        d.text((x - 12, py1 + 5), _pct(v, xs), fill=black, font=f)
    for v in ys:
        y = at({"recall": xs[0], "chair_i": v})[1]
        d.line([(px0, y), (px1, y)], fill=grey)
        d.text((px0 - 36, y - 7), _pct(v, ys), fill=black, font=f)
    d.rectangle([px0, py0, px1, py1], outline=black)
    d.text(((px0 + px1) / 2 - 70, py1 + 24), "recall (%), validation scenes", fill=black, font=f)
    d.text((x0 + 6, py0 - 20), "CHAIR_i (%)", fill=black, font=f)
    d.text(((px0 + px1 - d.textlength(panel["title"], font=_font(14))) / 2, y0 + 8), panel["title"], fill=black,
           font=_font(14))
    gx = at({"recall": guard, "chair_i": ys[0]})[0]
    for y in range(int(py0), int(py1), 8):  # the recall guard, dashed
        d.line([(gx, y), (gx, min(y + 4, py1))], fill=(90, 90, 90))
    d.text((gx + 4, py0 + 4), f"guard: recall -{100 * GUARDS['recall']:.0f}", fill=(90, 90, 90), font=f)
    for name in METHODS:
        curve, c = panel["curves"].get(name), COLORS[name]
        if not curve:
            continue
        xy = [at(pt) for pt in curve]
        d.line(xy, fill=c, width=2)
        for x, y in xy:
            d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=c)
        chosen = next((pt for pt in curve if pt["step"] == panel["selected"].get(name)), None)
        if chosen is not None and chosen["step"] > 0:
            x, y = at(chosen)
            d.ellipse([x - 7, y - 7, x + 7, y + 7], outline=c, width=2)
    x, y = at(panel["base"])
    d.rectangle([x - 5, y - 5, x + 5, y + 5], fill=black)


def _ticks(lo, hi, n=6):
    """Round tick values (fractions) spanning [lo, hi] with about n intervals, at 1 / 2 / 5 x 10^k percent."""
    span = max(hi - lo, 1e-3)
    raw = span / n
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    start, stop = math.floor(lo / step) * step, math.ceil(hi / step) * step
    return [start + k * step for k in range(int(round((stop - start) / step)) + 1)]


def _pct(v, ticks):
    """A tick label in percent, with as many decimals as the tick step needs."""
    step = 100 * (ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    return f"{100 * v:.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"


def _font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()
