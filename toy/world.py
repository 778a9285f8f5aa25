"""The toy world: procedurally drawn scenes where every object is known, so hallucination is exact.

Why it makes a small VLM hallucinate for the right reason. Each scene type has an *anchor* object that is always
there and *companions* that usually come with it (a fork with a plate 85% of the time in a table scene). Captions
are exact: they name only what is drawn. But companions, when present, are often faint (low contrast) or partly
covered, so the visual evidence for them is weak while the textual prior "plate => fork" is strong. A model that
under-uses its eyes learns the prior and names the companion whether or not it is there: a hallucination from
co-occurrence, the first of POVID's three categories, measured exactly by CHAIR against the annotations. Anchors and
extras are never faint, so the same model must still see to get recall.

Captions written by a careless annotator (--caption-noise, 0.5 in the demo). With eyes that see (the demo pretrains
its vision tower, toy/pretrain_vision.py) exact captions leave the prior little to add: the model names an absent
companion only when the pixels are ambiguous. Real instruction data is not exact: LLaVA's detailed descriptions were
written by a text-only GPT-4 from boxes and short captions and name objects the image does not show, so the model
learns to name what usually goes with the scene. sft.json's caption turns do the same: each absent companion is
named with P = noise x its co-occurrence (written_caption; with 0.5, 28% of the training captions name one). Every
other file keeps the exact captions - train.json, so every preference pair's chosen answer is exact, and the
annotations CHAIR and POPE score against.

Pretraining scenes (--n-pretrain, SFT only; 0 by default and in the demo). A real LLaVA's eyes come from elsewhere: a
CLIP tower trained on 400M image-text pairs and a projector aligned on 558k captioned images before instruction
tuning, so they know a fork regardless of the table around it. A tiny model trained from scratch on the scene-typed
data alone never learns to look for a fork (it is named in every table scene, drawn or not). Pretraining scenes stand
in for that stage: 2-5 categories drawn uniformly from all 15 on any background (no co-occurrence), every object faint
or covered at the companions' rates, "List the objects in the image." answered by the exact listing, then two
existence questions; the description prompt and its co-occurrence prior stay with the scene-typed scenes. Measured
(README, "What was tried"): with 4,000 of them POVID then cut absent forks, lamps and benches while still naming
present ones, but the gain over the demo's world did not hold across SFT seeds or on the test scenes, so the demo
does not use them.

World design (PIL, drawn in 64-px units on a `size` canvas, 64 by default; deterministic: scene i of seed s uses
random.Random(s * 1_000_003 + i), so any scene regenerates alone):

    scene    background      anchor       companions, P(companion | scene)           extras (P = .15 each)
    table    wooden brown    plate        fork .85, cup .60, bottle .45              book, ball
    street   asphalt grey    car          traffic light .80, person .60, dog .45     ball, bottle
    park     grass green     tree         bench .80, bird .60, ball .45              dog, person
    office   pale blue       laptop       lamp .80, book .60, cup .45                bottle, bird

  15 categories, one silhouette each; 6 colours (uniform); scene types uniform. Objects sit one per cell of a
  4 x 2 grid (16 x 32 units), 13-16 units wide, "small" (35%) = 60% of that. A present companion is faint with
  P = .30 (it keeps 35% of its colour, the rest is background) or else covered on its top half by a grey card with
  P = .20 (14% of companions); anchors and extras never are. Cups, books, birds and persons come twice with P = .2.
  Pretraining scene j is scene PRETRAIN_OFFSET + j of the same seed (sample_pretrain_scene), its caption the listing.

Caption grammar (exact; categories left to right by their first instance; a synonym replaces the category name
with P = .3 (cup/mug, car/automobile, person/man/pedestrian, dog/puppy, bottle/flask, laptop/computer,
bird/sparrow); "small" iff one small instance; the colour iff all instances share it; then one left/right relation
between two single-instance categories whose centres are >= 6 units apart, when such a pair exists):
    "a table scene with a red cup , a small white plate and two forks . the cup is left of the plate ."
QA turns after the caption (two per training scene): "Is there a {obj} in the image?" -> "Yes." / "No." (balanced;
half the "No." objects are absent companions, the question the prior gets wrong), then "What color is the {obj}?"
-> "{color}.", "How many {objs} are there?" -> "{number}." or a second existence question.

Outputs of `python -m toy.world --out DIR --n-train 4000 --n-test 500 --n-val 500 --seed 0 [--n-pretrain 4000]
[--caption-noise 0.5] [--size 64]` (`build_world(out, n_train, n_test, seed, size, n_val, n_pretrain,
caption_noise)` from Python; about 1 ms a
scene). Scenes 0..n_train-1 train, the next n_test test, the next n_val validation (held out like the test scenes,
for choosing settings without looking at the test scenes; drawn last, so they change no train or test file):
    DIR/images/{id}.png; DIR/train.json (LLaVA conversation JSON: caption turn + 2 QA turns per training scene);
    DIR/sft.json (what the SFT stage trains on: train.json, its caption turns the annotator's with --caption-noise
    (annotations.json's sft_caption where it differs), plus, per training scene, a conversation that opens with
    the image, asks about each of the scene's companions in turn (companion_turns) and then two fresh QA turns, so a
    question is also seen as the first turn, as POPE asks it; then one conversation per pretraining scene,
    pretrain_conversation); DIR/images/pretrain_{j}.png and DIR/pretrain_annotations.json for those;
    DIR/test_questions.jsonl (question_id, image_id, image, prompt "Describe this image." per test scene) and
    DIR/val_questions.jsonl (the same per validation scene);
    DIR/annotations.json ({id: {scene, objects (one entry per instance), instances (category, color, size, box
    [x0, y0, x1, y1] in pixels, faint, occluded), caption, image}} for every scene), DIR/test_annotations.json and
    DIR/val_annotations.json (that split only); DIR/splits.json ({"train": [...], "test": [...], "val": [...]}, and
    "pretrain": [...] when there are pretraining scenes; written last: it marks a complete world);
    DIR/synonyms.txt (CHAIR's format: a category, then its synonyms); DIR/vocab.json (word lists and scene
    co-occurrence for hallucinate.py's rules); DIR/tokenizer.json (word level; its vocabulary is the grammar's,
    the same for every seed and size); DIR/llava_config/ and DIR/clip_config/ (config.json + tokenizer.json of a tiny
    LLaVA and a tiny CLIP: ViT patch size // 4, so 16 image tokens at any size; see GRID).
"""
from __future__ import annotations

import argparse
import os
import random
import time

from PIL import Image, ImageDraw

from model.files import write_atomic, write_json, write_jsonl

SIZE = 64  # default canvas; --size 32..256 draws the same scenes larger or smaller
CAPTION_PROMPT = "Describe this image."  # CHAIR's caption prompt (eval.py chair-questions default)
LIST_PROMPT = "List the objects in the image."  # the pretraining scenes' prompt (see pretrain_conversation)
PRETRAIN_OFFSET = 20_000_000  # pretraining scene j is scene PRETRAIN_OFFSET + j: apart from every split's indices
SCENES = {  # background RGB, anchor, [(companion, p)], extras
    "table": ((150, 111, 72), "plate", [("fork", .85), ("cup", .6), ("bottle", .45)], ["book", "ball"]),
    "street": ((112, 112, 118), "car", [("traffic light", .8), ("person", .6), ("dog", .45)], ["ball", "bottle"]),
    "park": ((92, 150, 80), "tree", [("bench", .8), ("bird", .6), ("ball", .45)], ["dog", "person"]),
    "office": ((176, 196, 222), "laptop", [("lamp", .8), ("book", .6), ("cup", .45)], ["bottle", "bird"]),
}
COLORS = {"red": (220, 40, 40), "blue": (40, 70, 220), "yellow": (240, 210, 40), "white": (245, 245, 245),
          "black": (20, 20, 20), "orange": (245, 140, 20)}
SYNONYMS = {"cup": ["mug"], "car": ["automobile"], "person": ["man", "pedestrian"], "dog": ["puppy"],
            "bottle": ["flask"], "laptop": ["computer"], "bird": ["sparrow"]}
PLURAL = {"person": "people", "bench": "benches", "traffic light": "traffic lights", "man": "men",
          "pedestrian": "pedestrians", "puppy": "puppies", "sparrow": "sparrows"}
CAN_REPEAT = {"cup", "book", "bird", "person"}
NUMBERS = {1: "one", 2: "two", 3: "three"}
P_FAINT, P_OCCLUDED, P_EXTRA, P_SMALL, P_REPEAT, P_SYNONYM = 0.30, 0.20, 0.15, 0.35, 0.20, 0.30
FAINT_KEEP = 0.35  # a faint object keeps 35% of its colour, 65% is the background's
# The ViT sees GRID x GRID patches of size // GRID pixels. 4 = one patch column per column of the scene grid, so a
# whole object lies in one patch or two stacked ones. With 8 x 8 patches (64 image tokens) each object was cut into
# 4-9 fragments that a tiny tower trained from scratch hardly assembled in the SFT budget; the same 1,500 steps also
# take half the time at 4 x 4.
GRID = 4


def categories():
    out = []
    for _, anchor, comps, extras in SCENES.values():
        for c in [anchor, *[c for c, _ in comps], *extras]:
            if c not in out:
                out.append(c)
    return out


# ------------------------------------------------------------------------------------------- drawing
def draw_object(d: ImageDraw.ImageDraw, cat: str, box, rgb, u: float = 1.0):
    """One silhouette per category inside box = (x0, y0, x1, y1) in pixels; u = pixels per 64-px unit, so strokes
    keep their proportion on a larger canvas."""
    x0, y0, x1, y1 = box
    w1, w2 = max(1, round(u)), max(1, round(2 * u))  # thin and thick strokes
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if cat == "plate":
        d.ellipse(box, fill=rgb, outline=(60, 60, 60))
        d.ellipse((x0 + w * .25, y0 + h * .25, x1 - w * .25, y1 - h * .25), outline=(90, 90, 90))
    elif cat == "fork":
        d.line((cx, y0 + h * .35, cx, y1), fill=rgb, width=w2)
        for dx in (-w * .3, 0, w * .3):
            d.line((cx + dx, y0, cx + dx, y0 + h * .4), fill=rgb, width=w1)
        d.line((cx - w * .3, y0 + h * .4, cx + w * .3, y0 + h * .4), fill=rgb, width=w1)
    elif cat == "cup":
        d.rectangle((x0, y0 + h * .2, x1 - w * .3, y1), fill=rgb)
        d.arc((x1 - w * .5, y0 + h * .35, x1, y1 - h * .25), -90, 90, fill=rgb, width=w2)
    elif cat == "bottle":
        d.rectangle((x0 + w * .2, y0 + h * .35, x1 - w * .2, y1), fill=rgb)
        d.rectangle((cx - w * .12, y0, cx + w * .12, y0 + h * .4), fill=rgb)
    elif cat == "book":
        d.rectangle(box, fill=rgb, outline=(30, 30, 30))
        d.line((x0 + w * .15, y0, x0 + w * .15, y1), fill=(30, 30, 30), width=w1)
    elif cat == "ball":
        d.ellipse(box, fill=rgb)
        d.line((x0, cy, x1, cy), fill=(30, 30, 30), width=w1)
    elif cat == "car":
        d.rectangle((x0, y0 + h * .3, x1, y1 - h * .25), fill=rgb)
        d.rectangle((x0 + w * .2, y0, x1 - w * .25, y0 + h * .35), fill=rgb)
        for wx in (x0 + w * .25, x1 - w * .25):
            d.ellipse((wx - h * .18, y1 - h * .36, wx + h * .18, y1), fill=(25, 25, 25))
    elif cat == "traffic light":
        d.rectangle((x0 + w * .25, y0, x1 - w * .25, y1), fill=rgb, outline=(20, 20, 20))
        for i, c in enumerate(((230, 30, 30), (240, 200, 30), (40, 200, 60))):
            yy = y0 + h * (.2 + .3 * i)
            d.ellipse((cx - w * .15, yy - w * .15, cx + w * .15, yy + w * .15), fill=c)
    elif cat == "person":
        d.ellipse((cx - w * .22, y0, cx + w * .22, y0 + h * .28), fill=rgb)
        d.line((cx, y0 + h * .28, cx, y0 + h * .7), fill=rgb, width=w2)
        d.line((cx, y0 + h * .7, x0 + w * .2, y1), fill=rgb, width=w2)
        d.line((cx, y0 + h * .7, x1 - w * .2, y1), fill=rgb, width=w2)
        d.line((x0 + w * .1, y0 + h * .42, x1 - w * .1, y0 + h * .42), fill=rgb, width=w2)
    elif cat == "dog":
        d.ellipse((x0, y0 + h * .3, x1 - w * .25, y1 - h * .25), fill=rgb)
        d.ellipse((x1 - w * .4, y0, x1, y0 + h * .45), fill=rgb)
        for lx in (x0 + w * .15, x1 - w * .45):
            d.line((lx, y1 - h * .3, lx, y1), fill=rgb, width=w2)
    elif cat == "tree":
        d.rectangle((cx - w * .1, y0 + h * .6, cx + w * .1, y1), fill=(100, 60, 30))
        d.polygon([(x0, y0 + h * .65), (x1, y0 + h * .65), (cx, y0)], fill=rgb)
    elif cat == "bench":
        d.rectangle((x0, y0 + h * .35, x1, y0 + h * .55), fill=rgb)
        d.rectangle((x0, y0, x1, y0 + h * .15), fill=rgb)
        for lx in (x0 + w * .1, x1 - w * .1):
            d.line((lx, y0 + h * .55, lx, y1), fill=rgb, width=w2)
    elif cat == "bird":
        d.ellipse((x0, y0 + h * .3, x1 - w * .2, y1), fill=rgb)
        d.polygon([(x1 - w * .25, y0 + h * .45), (x1, y0 + h * .55), (x1 - w * .25, y0 + h * .7)], fill=(240, 150, 0))
        d.polygon([(x0 + w * .2, y0 + h * .5), (cx, y0), (cx + w * .1, y0 + h * .5)], fill=rgb)
    elif cat == "laptop":
        d.rectangle((x0 + w * .1, y0, x1 - w * .1, y0 + h * .6), fill=rgb, outline=(20, 20, 20))
        d.polygon([(x0, y1), (x1, y1), (x1 - w * .1, y0 + h * .65), (x0 + w * .1, y0 + h * .65)], fill=(80, 80, 80))
    elif cat == "lamp":
        d.polygon([(x0, y0 + h * .45), (x1, y0 + h * .45), (x1 - w * .25, y0), (x0 + w * .25, y0)], fill=rgb)
        d.line((cx, y0 + h * .45, cx, y1), fill=(40, 40, 40), width=w2)
        d.line((x0 + w * .2, y1 - 1, x1 - w * .2, y1 - 1), fill=(40, 40, 40), width=w2)
    else:
        raise ValueError(f"no drawing for category {cat!r}")


def blend(rgb, bg, keep):
    return tuple(int(round(keep * a + (1 - keep) * b)) for a, b in zip(rgb, bg))


# ------------------------------------------------------------------------------------------- sampling
def sample_scene(rng: random.Random):
    """Pick a scene type and its objects; returns (scene, [category, ...] with repeats, companion set)."""
    scene = rng.choice(sorted(SCENES))
    _, anchor, comps, extras = SCENES[scene]
    objs = [anchor]
    companions = set()
    for c, p in comps:
        if rng.random() < p:
            objs.append(c)
            companions.add(c)
    for c in extras:
        if c not in objs and rng.random() < P_EXTRA:
            objs.append(c)
    for c in list(objs):
        if c in CAN_REPEAT and len(objs) < 8 and rng.random() < P_REPEAT:
            objs.append(c)
    assert len(objs) <= 8, objs  # 1 anchor + 3 companions + 2 extras + at most 2 repeats: fits the 4 x 2 grid
    return scene, objs, companions


def sample_pretrain_scene(rng: random.Random):
    """A pretraining scene: 2-5 categories drawn uniformly from all 15 on any background, so no object predicts
    another (cups, books, birds and persons may still come twice). Every object may be faint or covered, at the
    companions' rates: the eyes learn each category, weak evidence included, with no prior to lean on."""
    scene = rng.choice(sorted(SCENES))
    objs = rng.sample(categories(), rng.randint(2, 5))
    for c in list(objs):
        if c in CAN_REPEAT and len(objs) < 8 and rng.random() < P_REPEAT:
            objs.append(c)
    return scene, objs, set(objs)  # every object is "hard to see"-eligible, like a companion


def place(rng, n_objs):
    """Boxes in 64-px units, one per cell of a 4-column x 2-row grid (16 x 32 cells), so objects never overlap and
    two objects in different columns have a well-defined left/right relation."""
    cells = rng.sample(range(8), n_objs)
    boxes = []
    for cell in cells:
        col, row = cell % 4, cell // 4
        s = rng.randint(13, 16)
        x0, y0 = col * 16 + rng.randint(0, 16 - s), row * 32 + rng.randint(0, 32 - s)
        boxes.append([x0, y0, x0 + s, y0 + s])
    return boxes


def render(i: int, seed: int, size: int = 64, pretrain: bool = False):
    """Scene i of the world `seed` on a size x size canvas: (PIL image, annotation dict, the scene's rng).
    Geometry is drawn in 64-px units scaled by size / 64, so every size shows the same scene. `pretrain` draws a
    pretraining scene (sample_pretrain_scene) captioned by its object listing alone."""
    if not 32 <= size <= 256:
        raise ValueError(f"image size {size} out of range [32, 256]")
    rng = random.Random(seed * 1_000_003 + i)
    u = size / 64
    scene, objs, companions = (sample_pretrain_scene if pretrain else sample_scene)(rng)
    bg = SCENES[scene][0]
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for _ in range(6):  # background texture: a few darker/lighter streaks hint at the scene's surface
        y = rng.randint(0, 63) * u
        d.line((0, y, size, y), fill=blend((0, 0, 0) if rng.random() < .5 else (255, 255, 255), bg, .12),
               width=max(1, round(u)))
    instances = []
    for cat, box in zip(objs, place(rng, len(objs))):
        color = rng.choice(sorted(COLORS))
        small = rng.random() < P_SMALL
        if small:  # shrink around the centre to 60%
            cx, cy, half = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) * 0.3
            box = [cx - half, cy - half, cx + half, cy + half]
        box = [int(round(v * u)) for v in box]  # pixels of this canvas
        faint = cat in companions and rng.random() < P_FAINT
        occluded = cat in companions and not faint and rng.random() < P_OCCLUDED
        rgb = blend(COLORS[color], bg, FAINT_KEEP) if faint else COLORS[color]
        draw_object(d, cat, box, rgb, u)
        if occluded:  # a grey card covers the top half
            d.rectangle((box[0] - u, box[1] - u, box[2] + u, (box[1] + box[3]) // 2), fill=(150, 150, 150))
        instances.append({"category": cat, "color": color, "size": "small" if small else "large", "box": box,
                          "faint": faint, "occluded": occluded})
    caption = make_caption(rng, scene, instances, u, listing_only=pretrain)
    ann = {"scene": scene, "objects": [o["category"] for o in instances], "instances": instances,
           "caption": caption}
    return img, ann, rng


def word_for(rng, cat):
    syn = SYNONYMS.get(cat)
    return rng.choice(syn) if syn and rng.random() < P_SYNONYM else cat


def plural(word):
    return PLURAL.get(word, word + "s")


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def make_caption(rng, scene, instances, u=1.0, listing_only=False):
    """Exact caption: every category present, nothing else; left to right by the first instance's left edge.
    A phrase is [count] [small] [colour] noun: "small" iff a single small instance, the colour iff all instances of
    the category share it. One left/right relation between two single-instance categories in different columns.
    `listing_only`: the phrases alone ("a red cup and two forks ."), no scene and no relation."""
    order = sorted(instances, key=lambda o: (o["box"][0], o["box"][1]))
    seen, groups = [], {}
    for o in order:
        if o["category"] not in groups:
            seen.append(o["category"])
        groups.setdefault(o["category"], []).append(o)
    words, phrases = {}, []
    for cat in seen:
        g = groups[cat]
        n = len(g)
        w = words[cat] = word_for(rng, cat)
        adj = ["small"] if n == 1 and g[0]["size"] == "small" else []
        if len({o["color"] for o in g}) == 1:
            adj.append(g[0]["color"])
        noun = " ".join(adj + [w if n == 1 else plural(w)])
        phrases.append(f"{NUMBERS[n]} {noun}" if n > 1 else f"{article(noun)} {noun}")
    listing = phrases[0] if len(phrases) == 1 else " , ".join(phrases[:-1]) + " and " + phrases[-1]
    if listing_only:
        return f"{listing} ."
    text = f"{article(scene)} {scene} scene with {listing} ."

    def centre(c):
        b = groups[c][0]["box"]
        return (b[0] + b[2]) / 2

    singles = [c for c in seen if len(groups[c]) == 1]
    pairs = [(a, b) for a in singles for b in singles if a != b and abs(centre(a) - centre(b)) >= 6 * u]
    if pairs:
        a, b = rng.choice(pairs)
        text += f" the {words[a]} is {'left' if centre(a) < centre(b) else 'right'} of the {words[b]} ."
    return text


def written_caption(i: int, seed: int, ann, noise: float, u: float = 1.0):
    """The SFT corpus' caption of scene i as a careless annotator writes it (--caption-noise): every absent
    companion of the scene type is named anyway with probability noise x its co-occurrence (a fork in an empty table
    scene with .85 x noise), with a random colour and size and an imagined place, so it may also take part in the
    relation. Real instruction data has the same flaw: LLaVA's detailed descriptions were written by a text-only
    GPT-4 from boxes and short captions, and name objects the image does not show. The exact caption (train.json,
    the preference data's chosen answers) is unchanged; only sft.json's caption turn uses this one. Its own rng,
    so every other file of the world stays byte-identical."""
    if noise <= 0:
        return ann["caption"]
    rng = random.Random(f"annotator:{seed}:{i}")
    present = set(ann["objects"])
    phantoms = []
    for c, p in SCENES[ann["scene"]][2]:
        if c not in present and rng.random() < noise * p:
            x0, y0 = rng.uniform(0, 48) * u, rng.uniform(0, 48) * u
            phantoms.append({"category": c, "color": rng.choice(sorted(COLORS)),
                             "size": "small" if rng.random() < P_SMALL else "large",
                             "box": [x0, y0, x0 + 16 * u, y0 + 16 * u]})
    if not phantoms:
        return ann["caption"]
    return make_caption(rng, ann["scene"], ann["instances"] + phantoms, u)


def companion_turns(rng, ann):
    """An existence question for each of the scene's companions, in random order, answered by what is drawn: the
    model must look for the fork to answer, since the scene alone says "fork" 85% of the time."""
    present = set(ann["objects"])
    comps = [c for c, _ in SCENES[ann["scene"]][2]]
    rng.shuffle(comps)
    return [(f"Is there {article(c)} {c} in the image?", "Yes." if c in present else "No.") for c in comps]


def qa_turns(rng, ann):
    """Two short QA turns: an existence question (yes/no balanced; half of the "no" objects are absent companions,
    the question the prior gets wrong), then a colour, count or second existence question."""
    present = sorted(set(ann["objects"]))
    _, _, comps, _ = SCENES[ann["scene"]]
    absent_comps = [c for c, _ in comps if c not in present]
    absent_any = [c for c in categories() if c not in present]

    def exists():
        if rng.random() < 0.5:
            obj, ans = rng.choice(present), "Yes."
        else:
            pool = absent_comps if absent_comps and rng.random() < 0.5 else absent_any
            obj, ans = rng.choice(pool), "No."
        return f"Is there {article(obj)} {obj} in the image?", ans

    turns = [exists()]
    kind = rng.random()
    singles = [o for o in ann["instances"] if ann["objects"].count(o["category"]) == 1]
    if kind < 0.4 and singles:
        inst = rng.choice(singles)
        turns.append((f"What color is the {inst['category']}?", f"{inst['color']}."))
    elif kind < 0.7:
        cat = rng.choice(present)
        turns.append((f"How many {plural(cat)} are there?", f"{NUMBERS[ann['objects'].count(cat)]}."))
    else:
        turns.append(exists())
    return turns


def pretrain_conversation(rng, ann):
    """A pretraining scene's SFT conversation: LIST_PROMPT answered by the exact listing, then two existence
    questions (yes / no balanced, the "no" objects drawn from all absent categories). Asking the questions first
    instead, so they must be answered from the image as POPE asks them, gave a baseline with a higher POPE F1 that
    DPO moved less, and less CHAIR_i cut per point of recall (README, "What was tried")."""
    present = sorted(set(ann["objects"]))
    absent = [c for c in categories() if c not in present]
    turns = [(LIST_PROMPT, ann["caption"])]
    for _ in range(2):
        obj, ans = (rng.choice(present), "Yes.") if rng.random() < 0.5 else (rng.choice(absent), "No.")
        turns.append((f"Is there {article(obj)} {obj} in the image?", ans))
    return image_first(turns)


def image_first(turns):
    """[(question, answer), ...] -> LLaVA conversation turns, the image with the first question."""
    conv = [{"from": who, "value": text} for q, a in turns for who, text in (("human", q), ("gpt", a))]
    conv[0]["value"] = "<image>\n" + conv[0]["value"]
    return conv


# ------------------------------------------------------------------------------------------- files
def build_tokenizer(texts, path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    vocab = {t: i for i, t in enumerate(specials)}
    for t in texts:
        for w, _ in pre.pre_tokenize_str(t):
            vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    tk.add_special_tokens(specials)
    write_atomic(path, tk.to_str())
    return tk


def configs(out, tk, size=SIZE):
    from model import CLIPConfig, CLIPTextConfig, LlavaConfig, TextConfig, VisionConfig
    V = tk.get_vocab_size()  # no padding rows: a sampled id is always a word
    ids = {t: tk.token_to_id(t) for t in ("<s>", "</s>", "<pad>", "<image>")}
    vision = VisionConfig(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                          image_size=size, patch_size=size // GRID, projection_dim=64)
    text = TextConfig(vocab_size=V, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5,
                      bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"])
    llava = LlavaConfig(vision=vision, text=text, image_token_id=ids["<image>"], pad_token_id=ids["<pad>"],
                        image_aspect_ratio="pad")
    clip = CLIPConfig(vision=vision, text=CLIPTextConfig(
        vocab_size=V, hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=48, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
        projection_dim=64), projection_dim=64)
    for sub, cfg in (("llava_config", llava), ("clip_config", clip)):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        write_json(os.path.join(out, sub, "config.json"), cfg.to_dict(), indent=2)
        write_atomic(os.path.join(out, sub, "tokenizer.json"), tk.to_str())


def grammar_words(pretrain: bool = False):
    """Every text any stage may say: the chat templates, the caption and QA grammar for every category, colour, count
    and synonym, POPE's suffix; LIST_PROMPT only for a world with pretraining scenes (so a world without them keeps
    the vocabulary it always had). The vocabulary depends on the grammar only, not on the seed or the number of
    scenes."""
    from model.tokenizer import VICUNA_SYSTEM
    texts = [VICUNA_SYSTEM, "USER: <image>\nASSISTANT:", CAPTION_PROMPT, *([LIST_PROMPT] if pretrain else []),
             "Describe the image.", "Answer the question using a single word or phrase.",
             "Yes. No. small large left right of an a and the is", "scene with , .", *SCENES,
             *[f"{c}." for c in COLORS], *[f"{n}." for n in NUMBERS.values()]]
    for c in categories():
        names = [c, *SYNONYMS.get(c, [])]
        texts += [f"Is there {article(c)} {c} in the image?", f"What color is the {c}?",
                  f"How many {plural(c)} are there?", *names, *[plural(n) for n in names]]
    return texts


def build_world(out: str, n_train: int, n_test: int, seed: int = 0, size: int = SIZE, n_val: int = 0,
                n_pretrain: int = 0, caption_noise: float = 0.0):
    """Draw n_train + n_test + n_val scenes (and n_pretrain pretraining scenes) and write every file of the world
    into `out` (see the module docstring). Scene i is train for i < n_train, then test, then validation: the
    validation scenes come after the test ones, so adding them leaves every train and test file unchanged; the
    pretraining scenes only add to sft.json (after the training scenes' conversations) and their own files."""
    if size % GRID:
        raise ValueError(f"image size {size} must be a multiple of {GRID} ({GRID} x {GRID} patches of size // {GRID} "
                         "pixels)")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    tk = build_tokenizer(grammar_words(n_pretrain > 0), os.path.join(out, "tokenizer.json"))
    unk = tk.token_to_id("<unk>")
    train, sft, anns = [], [], {}
    split = {"train": [], "test": [], "val": [], **({"pretrain": []} if n_pretrain else {})}
    questions = {"test": [], "val": []}

    def draw(i, iid, pretrain=False):
        """Render scene i, save its image as images/{iid}.png; (annotation with its image path, the scene's rng)."""
        img, ann, rng = render(i, seed, size, pretrain)
        ann["image"] = f"images/{iid}.png"
        img.save(os.path.join(out, ann["image"]))
        return ann, rng

    def check_words(iid, texts):  # the grammar and grammar_words() must agree: a word outside it is a bug
        for t in texts:
            if unk in tk.encode(t.removeprefix("<image>\n")).ids:
                raise ValueError(f"scene {iid}: text {t!r} has a word outside the tokenizer's vocabulary")

    for i in range(n_train + n_test + n_val):
        part = "train" if i < n_train else "test" if i < n_train + n_test else "val"
        iid = f"{part}_{i:06d}"
        ann, rng = draw(i, iid)
        rel = ann["image"]
        anns[iid] = ann
        texts = [ann["caption"]]
        if i < n_train:
            split["train"].append(iid)
            conv = [{"from": "human", "value": "<image>\n" + CAPTION_PROMPT}, {"from": "gpt", "value": ann["caption"]}]
            for q, a in qa_turns(rng, ann):
                conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
                texts += [q, a]
            train.append({"id": iid, "image": rel, "conversations": conv})
            turns = companion_turns(rng, ann) + qa_turns(rng, ann)
            qa = image_first(turns)
            texts += [t["value"] for t in qa]
            written = written_caption(i, seed, ann, caption_noise, size / 64)
            if written != ann["caption"]:
                ann["sft_caption"] = written
                texts.append(written)
            sft_conv = [conv[0], {"from": "gpt", "value": written}, *conv[2:]]
            sft += [{**train[-1], "conversations": sft_conv}, {"id": iid + "_qa", "image": rel, "conversations": qa}]
        else:
            split[part].append(iid)
            questions[part].append({"question_id": iid, "image_id": iid, "image": rel, "prompt": CAPTION_PROMPT})
        check_words(iid, texts)
    pretrain_anns = {}
    for j in range(n_pretrain):
        iid = f"pretrain_{j:06d}"
        ann, rng = draw(PRETRAIN_OFFSET + j, iid, pretrain=True)
        pretrain_anns[iid] = ann
        split["pretrain"].append(iid)
        conv = pretrain_conversation(rng, ann)
        check_words(iid, [t["value"] for t in conv])
        sft.append({"id": iid, "image": ann["image"], "conversations": conv})
    configs(out, tk, size)
    write_json(os.path.join(out, "train.json"), train, indent=None)
    if n_pretrain:
        write_json(os.path.join(out, "pretrain_annotations.json"), pretrain_anns, indent=None)
    write_json(os.path.join(out, "sft.json"), sft, indent=None)
    for part in ("test", "val"):
        write_jsonl(os.path.join(out, f"{part}_questions.jsonl"), questions[part])
        write_json(os.path.join(out, f"{part}_annotations.json"), {k: anns[k] for k in split[part]}, indent=None)
    write_json(os.path.join(out, "annotations.json"), anns, indent=None)
    write_atomic(os.path.join(out, "synonyms.txt"), "".join(", ".join([c, *SYNONYMS.get(c, [])]) + "\n"
                                                            for c in categories()))
    write_json(os.path.join(out, "vocab.json"), {
        "objects": categories(), "colors": sorted(COLORS), "sizes": ["small", "large"],
        "relations": ["left of", "right of"], "numbers": list(NUMBERS.values()),
        "synonyms": {s: c for c, ss in SYNONYMS.items() for s in ss},
        "cooccurrence": {sc: [SCENES[sc][1], *[c for c, _ in SCENES[sc][2]]] for sc in SCENES}}, indent=2)
    write_json(os.path.join(out, "splits.json"), split, indent=None)  # last: its presence marks a complete world
    return split


def main(argv=None):
    ap = argparse.ArgumentParser(description="generate the toy world")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--n-val", type=int, default=0, help="validation scenes, drawn after the test ones")
    ap.add_argument("--n-pretrain", type=int, default=0,
                    help="pretraining scenes (any objects on any background, SFT only; see the module docstring)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--caption-noise", type=float, default=0.0,
                    help="SFT captions name each absent companion with P = this x its co-occurrence (written_caption)")
    ap.add_argument("--size", type=int, default=SIZE, help="image side in pixels (64-96 intended)")
    a = ap.parse_args(argv)
    t0 = time.time()
    split = build_world(a.out, a.n_train, a.n_test, a.seed, a.size, a.n_val, a.n_pretrain, a.caption_noise)
    print(f"toy world: {len(split['train'])} train + {len(split['test'])} test + {len(split['val'])} validation "
          f"+ {a.n_pretrain} pretraining scenes in {a.out} "
          f"({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
