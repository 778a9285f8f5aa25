"""CHAIR: Caption Hallucination Assessment with Image Relevance (Rohrbach, Hendricks et al., EMNLP 2018).

    CHAIR_i = |hallucinated object mentions| / |all object mentions|   (pooled over captions, repeats counted)
    CHAIR_s = |captions with >= 1 hallucinated mention| / |all captions| (captions with no object word count too)
    recall  = sum_c |objects of c mentioned and in its ground truth| / sum_c |ground-truth objects of c|

A mention is hallucinated when its canonical category is not in the image's ground-truth set. Object words are
found the way the reference scorer does (LisaAnne/Hallucination `chair.py`, and its Maxlinn/OPERA ports):
  1. lowercase and tokenise (own regex tokenizer; "-" between words splits them, "dog's" -> "dog");
  2. singularise every token (`singularize` below: a small rule set with irregular plurals, no NLTK/pattern);
  3. merge multi-word phrases before single words, longest first: every multi-word synonym in the table
     ("hot dog", "teddy bear", ...) plus the reference's fixed rules: "baby X" / "adult X" -> X for animal words
     (so "baby" does not fire *person*), "passenger jet/train" -> jet/train, "bow tie" -> tie,
     "toilet seat" -> toilet, and "home plate" / "train track" swallowed (no object);
  4. the toilet-seat rule: if "toilet" occurs anywhere in the caption, every "seat" is dropped (else *chair*);
  5. keep the tokens that are in the synonym table and map each to its category.
The same normalisation (singularised words) is applied to the table's entries, so "people" and "persons" meet.

Synonym file (the standard COCO `synonyms.txt` format): one line per category, the category first, then its
synonyms, comma-separated; blank lines and lines starting with "#" are skipped. To score COCO, pass the reference
scorer's own table, `data/synonyms.txt` of LisaAnne/Hallucination (80 lines, one per COCO category, the first item
spelled as in instances_*2014.json); the toy world ships its own table.

Ground truth from COCO (`coco_ground_truth`, `eval.py chair-gt`), the reference scorer's rule: an image's objects are
the categories of its instance annotations (instances_{val,train}2014.json) plus every object the caption routine
above finds in its ~5 human captions (captions_*2014.json), so a captioner's "table" or "kid" counts as present.
The reference loads train and val together; ids are unique across the two, so val alone gives the same sets for
val images. Image ids are COCO's integers (file COCO_val2014_%012d.jpg, from images[].file_name).
Sample (`sample_image_ids`), from the images of the first instances file: random.Random(seed).sample(ids sorted
ascending, n), sorted again; the ids are written out so that a run can be repeated on the same images (POVID's
authors did not keep theirs, POVID issue #5), and --sample-ids reads such a list back.

Known differences from the reference scorer (its numbers are not bit-identical to ours, nor to each other):
our singulariser is neither pattern.en's nor WordNet's; entries are whitespace-stripped, so the COCO table's
" motor bike" and " cheesecake" do match here; phrases of 3+ words ("stove top oven") are matched; the length is
counted in words (punctuation excluded). The ground truth's caption objects come from this routine too, so they
share these differences (sets differ only where a caption word is tokenised or singularised differently).

    from evals.chair import Synonyms, chair_scores
    scores = chair_scores({"1": "A man with two dogs."}, {"1": {"person"}}, Synonyms.from_file("synonyms.txt"))
    python eval.py chair-gt --instances instances_val2014.json --captions captions_val2014.json --images-dir val2014 \
        --synonyms synonyms.txt --num-images 500 --seed 0 --output chair500/    # then eval.py generate / chair
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys

from evals.files import load_annotations, protocol, read_json, read_jsonl, write_atomic, write_json, write_jsonl

# ---------------------------------------------------------------------------------------------- singulariser
IRREGULAR = {
    "people": "person", "persons": "person", "men": "man", "women": "woman", "children": "child",
    "mice": "mouse", "geese": "goose", "feet": "foot", "teeth": "tooth", "oxen": "ox", "dice": "die",
    "knives": "knife", "wives": "wife", "lives": "life", "leaves": "leaf", "loaves": "loaf", "shelves": "shelf",
    "halves": "half", "calves": "calf", "wolves": "wolf", "scarves": "scarf", "elves": "elf", "thieves": "thief",
    "hooves": "hoof", "cacti": "cactus", "fungi": "fungus", "skis": "ski", "buses": "bus", "busses": "bus",
    "lenses": "lens", "gases": "gas", "potatoes": "potato", "tomatoes": "tomato", "heroes": "hero",
    "mangoes": "mango", "volcanoes": "volcano", "mosquitoes": "mosquito", "dominoes": "domino",
    "cookies": "cookie", "movies": "movie", "brownies": "brownie", "zombies": "zombie", "hoodies": "hoodie",
    "selfies": "selfie", "goalies": "goalie", "smoothies": "smoothie", "beanies": "beanie", "rookies": "rookie",
    "birdies": "birdie", "veggies": "veggie", "ties": "tie", "pies": "pie", "lies": "lie",
}
# no plural form (or plural-only): left alone
INVARIANT = {"sheep", "deer", "fish", "bison", "moose", "salmon", "trout", "aircraft", "series", "species", "news",
             "scissors", "pants", "jeans", "shorts", "trousers", "clothes", "gas", "canvas", "atlas", "christmas",
             "alas", "whereas", "texas", "perhaps", "always", "sometimes", "towards", "afterwards"}
NOT_MEN_PLURAL = {"specimen", "abdomen", "omen", "stamen"}


def singularize(word: str) -> str:
    """Singular form of one lowercase token ("dogs" -> "dog", "benches" -> "bench", "policemen" -> "policeman").
    Only plural nouns are meant to change; verbs in -s may be touched too, as with the reference scorer."""
    w = word
    if w in IRREGULAR:
        return IRREGULAR[w]
    if w in INVARIANT or len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("men") and w not in NOT_MEN_PLURAL:  # policemen, snowmen, sportswomen
        return w[:-3] + "man"
    if not w.endswith("s") or w.endswith(("ss", "us", "is")):  # glass, bus, tennis: not plurals
        return w
    if w.endswith("ies"):
        return w[:-3] + "y"  # ponies, puppies (the -ie nouns are in IRREGULAR)
    if w.endswith(("sses", "xes", "zzes", "ches", "shes")):
        return w[:-2]  # glasses, boxes, benches, dishes
    return w[:-1]  # dogs, horses, houses, shoes, bananas


# ---------------------------------------------------------------------------------------------- tokenising
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal",
                "cub")
# built-in phrase rules of the reference scorer: phrase -> replacement token, or None to swallow it
FIXED_PHRASES = {"passenger jet": "jet", "passenger train": "train", "bow tie": "tie", "toilet seat": "toilet",
                 "home plate": None, "train track": None}
FIXED_PHRASES.update({f"{age} {a}": a for age in ("baby", "adult") for a in ANIMAL_WORDS})


def tokenize(text: str) -> list[str]:
    """Lowercase word and punctuation tokens; punctuation stays so that phrases never merge across it."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)  # teddy-bear -> teddy bear
    toks = _TOKEN.findall(text)
    return [t[:-2] if t.endswith("'s") else t for t in toks]


def normalize_phrase(phrase: str) -> str:
    """The form table entries and caption n-grams are compared in: lowercased, singularised words."""
    return " ".join(singularize(t) for t in tokenize(phrase))


class Synonyms:
    """Category table: `inverse` maps a normalised word or phrase to its category; `phrases` holds the multi-word
    entries and fixed rules that are merged before single words."""

    def __init__(self, table: dict[str, list[str]], source: str = "<dict>"):
        self.source = source
        self.categories = list(table)
        self.inverse: dict[str, str] = {}
        for cat, syns in table.items():
            for entry in [cat, *syns]:
                key = normalize_phrase(entry)
                if not key:
                    continue
                other = self.inverse.get(key)
                if other is not None and other != cat:
                    raise ValueError(f"{source}: {entry!r} (read as {key!r}) is listed under both {other!r} and "
                                     f"{cat!r}")
                self.inverse[key] = cat
        self.phrases: dict[str, str | None] = dict(FIXED_PHRASES)
        self.phrases.update({k: k for k in self.inverse if " " in k})  # table entries win over the fixed rules
        self.max_phrase = max(len(p.split()) for p in self.phrases)

    @classmethod
    def from_file(cls, path: str) -> "Synonyms":
        table: dict[str, list[str]] = {}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                entries = [e.strip() for e in line.split(",") if e.strip()]
                cat = entries[0].lower()
                if cat in table:
                    raise ValueError(f"{path}:{lineno}: category {cat!r} has a second line")
                table[cat] = entries[1:]
        if not table:
            raise ValueError(f"{path}: no categories")
        return cls(table, source=path)

    def canonical(self, name: str) -> str | None:
        return self.inverse.get(normalize_phrase(name))

    def extract(self, caption: str) -> tuple[list[tuple[str, str]], int]:
        """Object mentions of a caption as (category, surface words) in order, and its length in words."""
        raw = tokenize(caption)
        sing = [singularize(t) for t in raw]
        merged: list[tuple[str | None, str]] = []  # (normalised token or phrase replacement, surface text)
        i = 0
        while i < len(sing):
            for n in range(min(self.max_phrase, len(sing) - i), 1, -1):
                key = " ".join(sing[i:i + n])
                if key in self.phrases:
                    merged.append((self.phrases[key], " ".join(raw[i:i + n])))
                    i += n
                    break
            else:
                merged.append((sing[i], raw[i]))
                i += 1
        if any(tok == "toilet" for tok, _ in merged):  # the toilet-seat rule
            merged = [(tok, s) for tok, s in merged if tok != "seat"]
        mentions = [(self.inverse[tok], s) for tok, s in merged if tok is not None and tok in self.inverse]
        return mentions, sum(t[0].isalnum() for t in raw)


def chair_scores(captions: dict, gt_objects: dict, synonyms: Synonyms | str) -> dict:
    """CHAIR_s, CHAIR_i, recall and mean length (fractions, not percent) plus per-caption details.

    captions: {id: caption}; gt_objects: {id: iterable of object names}, names mapped through the table (an
    unknown name is an error: it could never be mentioned). Ids are compared as strings. An id with no ground
    truth is an error, not an empty set (an empty set would make every mention a hallucination)."""
    syn = Synonyms.from_file(synonyms) if isinstance(synonyms, str) else synonyms
    gt = {str(k): v for k, v in gt_objects.items()}
    per_caption = {}
    n_hall_caps = n_mentions = n_hall = n_gt = n_gt_found = total_len = 0
    for cid, caption in captions.items():
        key = str(cid)
        if key not in gt:
            raise KeyError(f"caption {cid!r} has no ground-truth objects (ids are matched as strings)")
        gt_cats = set()
        for name in gt[key]:
            cat = syn.canonical(name)
            if cat is None:
                raise ValueError(f"ground truth of {cid!r}: object {name!r} is not in the synonym table "
                                 f"{syn.source}")
            gt_cats.add(cat)
        mentions, length = syn.extract(caption)
        hall = [(c, s) for c, s in mentions if c not in gt_cats]
        found = {c for c, _ in mentions} & gt_cats
        n_mentions += len(mentions)
        n_hall += len(hall)
        n_hall_caps += bool(hall)
        n_gt += len(gt_cats)
        n_gt_found += len(found)
        total_len += length
        per_caption[key] = {"mentioned": [c for c, _ in mentions], "hallucinated": [c for c, _ in hall],
                            "words": [s for _, s in mentions], "hallucinated_words": [s for _, s in hall],
                            "gt": sorted(gt_cats), "recalled": sorted(found), "length": length}
    n = len(per_caption)
    if n == 0:
        raise ValueError("chair_scores: no captions")
    return {"chair_s": n_hall_caps / n, "chair_i": n_hall / n_mentions if n_mentions else 0.0,
            "recall": n_gt_found / n_gt if n_gt else 0.0, "length": total_len / n, "n_captions": n,
            "n_mentions": n_mentions, "n_hallucinated": n_hall, "n_hallucinated_captions": n_hall_caps,
            "n_gt_objects": n_gt, "per_caption": per_caption}


# ---------------------------------------------------------------------------------------------- COCO ground truth
def _records(path: str, data, key: str, fields: dict) -> list[dict]:
    """data[key] as a list of objects holding `fields` ({name: type}); anything else names file, record, field."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path}: expected a COCO annotation file (a JSON object with a {key!r} list)")
    for i, rec in enumerate(data[key]):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: {key}[{i}]: expected a JSON object")
        for name, typ in fields.items():
            if name not in rec:
                raise ValueError(f"{path}: {key}[{i}]: missing field {name!r}")
            if not isinstance(rec[name], typ) or isinstance(rec[name], bool):
                raise ValueError(f"{path}: {key}[{i}]: field {name!r} must be {typ.__name__}, got {rec[name]!r}")
    return data[key]


def read_coco_images(path: str, data) -> dict[int, str]:
    out: dict[int, str] = {}
    for i, im in enumerate(_records(path, data, "images", {"id": int, "file_name": str})):
        if im["id"] in out:
            raise ValueError(f"{path}: images[{i}]: image id {im['id']} appears twice")
        out[im["id"]] = im["file_name"]
    return out


def coco_instance_objects(path: str, data, syn: Synonyms, images: dict[int, str]) -> tuple[dict[int, set], int]:
    """{image_id: categories of its instance annotations} (canonical names) and the number of annotations skipped
    because their image is in no images[] list (counted, never silently dropped)."""
    names = {}
    for i, c in enumerate(_records(path, data, "categories", {"id": int, "name": str})):
        canon = syn.canonical(c["name"])
        if canon is None:
            raise ValueError(f"{path}: categories[{i}]: name {c['name']!r} is not in the synonym table {syn.source}")
        names[c["id"]] = canon
    objects: dict[int, set] = {}
    orphans = 0
    for i, a in enumerate(_records(path, data, "annotations", {"image_id": int, "category_id": int})):
        if a["category_id"] not in names:
            raise ValueError(f"{path}: annotations[{i}]: category_id {a['category_id']} is not in categories")
        if a["image_id"] not in images:
            orphans += 1
            continue
        objects.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    return objects, orphans


def coco_caption_texts(path: str, data, wanted: set[int], images: dict[int, str]) -> tuple[dict[int, list], int]:
    """{image_id: [captions]} for the wanted images, and the number of captions skipped because their image is in no
    instances file's images[] list."""
    caps: dict[int, list] = {}
    orphans = 0
    for a in _records(path, data, "annotations", {"image_id": int, "caption": str}):
        if a["image_id"] not in images:
            orphans += 1
        elif a["image_id"] in wanted:
            caps.setdefault(a["image_id"], []).append(a["caption"])
    return caps, orphans


def sample_image_ids(ids, n: int, seed: int) -> list[int]:
    """n ids drawn without replacement by random.Random(seed) from the ids sorted ascending; returned sorted."""
    pool = sorted(ids)
    if n > len(pool):
        raise ValueError(f"asked for {n} images, only {len(pool)} are annotated")
    return sorted(random.Random(seed).sample(pool, n))


def coco_ground_truth(instances: dict[str, dict], captions: dict[str, dict], syn: Synonyms,
                      choose) -> tuple[dict[int, dict], dict]:
    """CHAIR ground truth of the chosen COCO images (module docstring). instances / captions: {path: parsed JSON};
    choose(images {id: file_name} of the *first* instances file, the one evaluated on, e.g. val2014) -> the image ids
    to keep; further instances files (train2014, as the reference loads) only add ground truth. Returns
    ({image_id: {"objects", "from_instances", "from_captions", "file_name", "n_captions"}}, stats with every
    skipped count)."""
    images: dict[int, str] = {}
    population: dict[int, str] = {}
    for n, (path, data) in enumerate(instances.items()):
        for k, v in read_coco_images(path, data).items():
            if k in images:
                raise ValueError(f"{path}: image id {k} is also listed by another instances file")
            images[k] = v
            if n == 0:
                population[k] = v
    inst: dict[int, set] = {}
    stats = {"images_annotated": len(images), "images_to_sample_from": len(population),
             "skipped_instance_annotations_unknown_image": 0,
             "skipped_captions_unknown_image": 0}
    for path, data in instances.items():
        objs, orphans = coco_instance_objects(path, data, syn, images)
        stats["skipped_instance_annotations_unknown_image"] += orphans
        for k, v in objs.items():
            inst.setdefault(k, set()).update(v)
    chosen = list(choose(population))
    wanted = set(chosen)
    caps: dict[int, list] = {}
    for path, data in captions.items():
        c, orphans = coco_caption_texts(path, data, wanted, images)
        stats["skipped_captions_unknown_image"] += orphans
        for k, v in c.items():
            caps.setdefault(k, []).extend(v)
    gt = {}
    for k in chosen:
        from_caps = {cat for text in caps.get(k, []) for cat, _ in syn.extract(text)[0]}
        from_inst = inst.get(k, set())
        gt[k] = {"objects": sorted(from_inst | from_caps), "from_instances": sorted(from_inst),
                 "from_captions": sorted(from_caps), "file_name": images[k], "n_captions": len(caps.get(k, []))}
    stats.update({"images": len(gt), "images_without_captions": sum(not v["n_captions"] for v in gt.values()),
                  "images_without_objects": sum(not v["objects"] for v in gt.values()),
                  "objects_per_image": sum(len(v["objects"]) for v in gt.values()) / max(1, len(gt)),
                  "objects_only_from_captions": sum(len(set(v["from_captions"]) - set(v["from_instances"]))
                                                    for v in gt.values())})
    return gt, stats


def write_chair_gt(out_dir: str, gt: dict[int, dict], images_dir: str, prompt: str, synonyms: str, info: dict) -> None:
    """The files of `eval.py chair-gt` in out_dir: sample_ids.txt (the ids, one per line: the list to publish),
    chair_gt.json (`eval.py chair --annotations`), chair_questions.jsonl (`eval.py generate --questions`),
    synonyms.txt (a copy of the table, which `chair` finds beside the GT) and chair_gt_info.json (sources, sample
    rule, counts). Every sampled image must be in images_dir; nothing is written otherwise."""
    paths = {k: os.path.join(images_dir, v["file_name"]) for k, v in gt.items()}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(gt)} sampled images are not in {images_dir}, "
                                f"e.g. {missing[:3]}")
    rel = {k: os.path.relpath(p, os.path.abspath(out_dir)) for k, p in paths.items()}  # image paths: as GT files say
    write_atomic(os.path.join(out_dir, "sample_ids.txt"), "".join(f"{k}\n" for k in gt))
    write_json(os.path.join(out_dir, "chair_gt.json"), {str(k): {**v, "image": rel[k]} for k, v in gt.items()})
    write_jsonl(os.path.join(out_dir, "chair_questions.jsonl"),
                [{"question_id": k, "image_id": k, "image": rel[k], "prompt": prompt} for k in gt])
    copy = os.path.join(out_dir, "synonyms.txt")
    if os.path.abspath(synonyms) != os.path.abspath(copy):
        shutil.copyfile(synonyms, copy)
    write_json(os.path.join(out_dir, "chair_gt_info.json"), info)


# ---------------------------------------------------------------------------------------------- commands

def _read_ids(path: str) -> list[int]:
    ids = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                try:
                    ids.append(int(line))
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: not a COCO image id: {line!r}") from None
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: an image id appears twice")
    return ids


def cmd_chair_gt(a) -> None:
    for name, paths in (("--instances", a.instances), ("--captions", a.captions)):
        if len(set(map(os.path.abspath, paths))) != len(paths):
            raise ValueError(f"{name}: a file is given twice ({', '.join(paths)})")
    syn = Synonyms.from_file(a.synonyms)
    instances = {p: read_json(p) for p in a.instances}
    captions = {p: read_json(p) for p in a.captions}

    def choose(images):
        if a.sample_ids is None:
            return sample_image_ids(images, a.num_images, a.seed)
        ids = _read_ids(a.sample_ids)
        unknown = [i for i in ids if i not in images]
        if unknown:
            raise ValueError(f"{a.sample_ids}: {len(unknown)} ids are not in {a.instances[0]}, e.g. {unknown[:5]}")
        return sorted(ids)

    gt, stats = coco_ground_truth(instances, captions, syn, choose)
    sampled = "ids from " + a.sample_ids if a.sample_ids else \
        f"random.Random({a.seed}).sample(sorted ids, {a.num_images}), sorted"
    write_chair_gt(a.output, gt, a.images_dir, a.prompt, a.synonyms,
                   {"instances": a.instances, "captions": a.captions, "synonyms": a.synonyms,
                    "images_dir": a.images_dir, "sample": sampled, "prompt": a.prompt, "stats": stats})
    print(f"chair-gt: {stats['images']} images ({sampled}), {stats['objects_per_image']:.2f} objects per image "
          f"({stats['objects_only_from_captions']} only from captions); skipped: "
          f"{stats['skipped_instance_annotations_unknown_image']} instance annotations and "
          f"{stats['skipped_captions_unknown_image']} captions of unlisted images; "
          f"{stats['images_without_captions']} images without captions -> {a.output}/{{sample_ids.txt, "
          f"chair_gt.json, chair_questions.jsonl, synonyms.txt, chair_gt_info.json}}", file=sys.stderr)


def cmd_chair_questions(a) -> None:
    ann = load_annotations(a.annotations)
    qs = []
    for image_id, rec in ann.items():
        if "image" not in rec:
            raise ValueError(f"{a.annotations}: image {image_id!r} has no 'image' path")
        qs.append({"question_id": image_id, "image_id": image_id, "prompt": a.prompt,
                   "image": os.path.relpath(rec["image"], os.path.dirname(os.path.abspath(a.output)))})
    write_jsonl(a.output, qs)
    print(f"chair-questions: {len(qs)} questions -> {a.output}", file=sys.stderr)


def cmd_chair(a) -> dict:
    answers = read_jsonl(a.answers, required=("question_id", "text"))
    captions = {}
    for i, r in enumerate(answers, 1):
        cid = str(r.get("image_id", r["question_id"]))
        if cid in captions:
            raise ValueError(f"{a.answers}: answer {i}: a second caption for image {cid!r}")
        captions[cid] = r["text"]
    ann = load_annotations(a.annotations)
    if a.synonyms is None:
        a.synonyms = os.path.join(os.path.dirname(os.path.abspath(a.annotations)), "synonyms.txt")
        if not os.path.exists(a.synonyms):
            raise FileNotFoundError(f"no --synonyms given and no {a.synonyms} next to the annotations")
    scores = chair_scores(captions, {k: v["objects"] for k, v in ann.items()}, Synonyms.from_file(a.synonyms))
    per_caption = scores.pop("per_caption")
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.answers)), "chair.json")
    write_json(out, {"kind": "chair", "answers": a.answers, "annotations": a.annotations, "synonyms": a.synonyms,
                     "scorer": "povid evals/chair.py (own singulariser, see its docstring)",
                     "protocol": protocol(answers), "metrics": scores, "per_caption": per_caption})
    print(f"CHAIR_s {100 * scores['chair_s']:.1f}  CHAIR_i {100 * scores['chair_i']:.1f}  recall "
          f"{100 * scores['recall']:.1f}  len {scores['length']:.1f}  ({scores['n_captions']} captions) -> {out}")
    return scores


def _args_chair_gt(t: argparse.ArgumentParser) -> None:
    t.add_argument("--instances", action="append", required=True,
                   help="instances_val2014.json (repeatable; the sample comes from the first)")
    t.add_argument("--captions", action="append", required=True, help="captions_val2014.json (repeatable)")
    t.add_argument("--images-dir", required=True, help="the folder of the images (val2014/)")
    t.add_argument("--synonyms", required=True, help="LisaAnne/Hallucination data/synonyms.txt")
    t.add_argument("--num-images", type=int, default=500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--sample-ids", default=None, help="use these ids (one per line) instead of drawing a sample")
    t.add_argument("--prompt", default="Describe this image.")
    t.add_argument("--output", required=True, help="output folder")


def _args_chair_questions(q: argparse.ArgumentParser) -> None:
    q.add_argument("--annotations", required=True)
    q.add_argument("--output", required=True)
    q.add_argument("--prompt", default="Describe this image.")


def _args_chair(c: argparse.ArgumentParser) -> None:
    c.add_argument("--answers", required=True)
    c.add_argument("--annotations", required=True)
    c.add_argument("--synonyms", default=None,
                   help="synonym table, COCO synonyms.txt format (default: synonyms.txt next to the annotations)")
    c.add_argument("--out", default=None, help="metrics JSON (default: chair.json next to the answers)")


COMMANDS = {
    "chair-gt": ("CHAIR ground truth + a seeded image sample + questions, from COCO", _args_chair_gt, cmd_chair_gt),
    "chair-questions": ("one captioning question per annotated image", _args_chair_questions, cmd_chair_questions),
    "chair": ("CHAIR_s / CHAIR_i / recall of captions", _args_chair, cmd_chair),
}
