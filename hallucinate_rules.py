"""Offline hallucination injection: the no-network stand-in for POVID's GPT-4V step (Zhou et al. 2024, sec. 3.1).

POVID asks a strong model to rewrite a ground-truth answer with plausible hallucinations of three kinds: objects
that co-occur with what is there but are absent, changed attributes, and wrong relations (or counts). This module
does the same with statistics and word lists, deterministically:

  object     an absent object is drawn with probability proportional to its co-occurrence with the objects
             present, sum_p C[p, c] where C[p, c] counts the images (of the data itself) holding both p and c;
             objects that never co-occur with anything present fall back to their overall frequency, then to
             uniform. It is inserted into a listing ("with a plate , a fork and a cup .") when the answer has one,
             otherwise as an added sentence ("There is also a fork next to the plate.").
  swap       a present object is misnamed as an absent one drawn the same way, in every mention ("a red plate ...
             the plate is left of" -> "a red fork ... the fork is left of"). Insertions alone make every rejected
             answer one object longer than its chosen one, and DPO then learns "list fewer objects", which costs
             recall; a swap keeps the length and teaches which object is there (toy world, 500 test scenes, POVID
             stage 1 with insertions only: recall 74.5 -> 69.3; see README).
  omit       a present object is left out of the listing, with every other sentence that names it. POVID's GPT-4V
             rewrites do this too (the paper's example drops the sentence about a horse); it is the one kind whose
             rejected answer is shorter than its chosen one, so it pulls against the length bias the other way.
  attribute  a colour or size adjective of an object is swapped for another; or, when the annotations give the
             object's true colours, a wrong colour is put in front of an uncoloured mention.
  relation   a spatial relation is swapped for its opposite ("left of" -> "right of").
  count      a number in front of a plural object is changed ("two cups" -> "three cups"), or a single object
             becomes several ("a fork" -> "two forks").
Short answers get the same treatment: "No." becomes "Yes." (an object claimed to exist), a colour or a number
answer is swapped.

"Absent" is decided against exact annotations when the caller has them (hallucinate.py rules --annotations), else
against the objects the ground-truth text mentions. Every edit is reported (category + a readable "edit" string)
so a pair's corruption is detectable. Randomness comes from random.Random(f"{seed}:{item_id}") per item: the
output for an item does not depend on the order of, or the other items in, the input.

    from hallucinate_rules import Vocab, Cooccurrence, RuleInjector
    vocab = Vocab(read_json("vocab.json"))             # or Vocab() for the built-in COCO-ish lists
    cooc = Cooccurrence([{"plate", "fork"}, {"plate", "cup"}, ...])
    edit = RuleInjector(vocab, cooc, seed=0).inject(answer, present={"plate"}, key="img1")
    edit.text, edit.category, edit.detail

`load_annotations` and `presence` decide which objects an item's image holds: its entry in an annotation file
(matched by item id, then image file name), else the record's own "objects", else the objects its answer names.
"""
from __future__ import annotations

import os
import random
import re
from collections import Counter
from dataclasses import dataclass

from model.files import read_json

DEFAULT_VOCAB = {  # COCO-ish lists for data that brings no vocab file
    "objects": ["person", "bicycle", "car", "motorcycle", "bus", "truck", "boat", "traffic light", "bench", "bird",
                "cat", "dog", "horse", "sheep", "cow", "umbrella", "backpack", "handbag", "suitcase", "ball", "kite",
                "skateboard", "surfboard", "bottle", "cup", "fork", "knife", "spoon", "bowl", "plate", "banana",
                "apple", "sandwich", "pizza", "cake", "chair", "couch", "bed", "table", "tv", "laptop", "phone",
                "book", "clock", "vase", "lamp", "tree"],
    "colors": ["red", "blue", "green", "yellow", "white", "black", "orange", "brown", "gray", "pink", "purple"],
    "sizes": ["small", "large", "tiny", "big"],
    "relations": ["left of", "right of", "above", "below", "in front of", "behind", "on top of", "under"],
    "numbers": ["one", "two", "three", "four", "five"],
    "synonyms": {"man": "person", "woman": "person", "boy": "person", "girl": "person", "child": "person",
                 "mug": "cup", "puppy": "dog", "kitten": "cat", "sofa": "couch",
                 "television": "tv", "automobile": "car", "bike": "bicycle", "cellphone": "phone"},
}
OPPOSITES = {"left of": "right of", "above": "below", "in front of": "behind", "on top of": "under",
             "inside": "outside", "over": "under"}
OPPOSITES.update({v: k for k, v in list(OPPOSITES.items())})
IRREGULAR_PLURALS = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
                     "sheep": "sheep", "fish": "fish", "knife": "knives", "foot": "feet", "tooth": "teeth"}
NUMBER_VALUES = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                 "nine": 9, "ten": 10}
SIZE_CLASSES = ({"small", "tiny", "little"}, {"large", "big", "huge"})  # a size swap crosses classes
# "object" adds an absent object, "swap" renames a present one; both are POVID's object hallucinations (the edit's
# category is "object"), kept apart so a mix can avoid the length bias of insertions alone (see the docstring)
DEFAULT_MIX = {"object": 0.25, "swap": 0.25, "omit": 0.1, "attribute": 0.2, "relation": 0.15, "count": 0.15}


def plural(word: str, irregular: dict | None = None) -> str:
    """English plural of a (possibly two-word) noun: the last word is inflected."""
    head, _, last = word.rpartition(" ")
    table = {**IRREGULAR_PLURALS, **(irregular or {})}
    if last in table:
        p = table[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        p = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        p = last[:-1] + "ies"
    else:
        p = last + "s"
    return f"{head} {p}" if head else p


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


@dataclass
class Mention:
    start: int
    end: int
    category: str  # canonical object name
    surface: str  # the word(s) as written (lower case)
    is_plural: bool


class Vocab:
    """Word lists and an object-mention finder. `synonyms` maps a surface word to its canonical object."""

    def __init__(self, d: dict | None = None):
        d = {**DEFAULT_VOCAB, **(d or {})}
        for key in ("objects", "colors", "sizes", "relations", "numbers"):
            if not isinstance(d[key], list) or not all(isinstance(w, str) and w.strip() for w in d[key]):
                raise ValueError(f"vocab[{key!r}] must be a list of non-empty strings")
        self.objects = [o.lower() for o in d["objects"]]
        self.colors, self.sizes = [c.lower() for c in d["colors"]], [s.lower() for s in d["sizes"]]
        self.relations = [r.lower() for r in d["relations"]]
        self.numbers = [n.lower() for n in d["numbers"]]
        self.plurals = {k.lower(): v.lower() for k, v in d.get("plurals", {}).items()}
        syn = {k.lower(): v.lower() for k, v in d.get("synonyms", {}).items() if v.lower() in self.objects}
        self.surface = {}  # surface form -> (canonical, is_plural)
        for word, canon in [(o, o) for o in self.objects] + list(syn.items()):
            self.surface.setdefault(word, (canon, False))
            self.surface.setdefault(plural(word, self.plurals), (canon, True))
        alts = sorted(self.surface, key=len, reverse=True)  # longest first: "traffic light" before "light"
        self._obj_re = re.compile(r"\b(" + "|".join(map(re.escape, alts)) + r")\b", re.I)

    def canonical(self, name: str) -> str | None:
        hit = self.surface.get(name.lower().strip())
        return hit[0] if hit else None

    def mentions(self, text: str) -> list[Mention]:
        out = []
        for m in self._obj_re.finditer(text):
            word = m.group(1).lower()
            canon, is_plural = self.surface[word]
            out.append(Mention(m.start(), m.end(), canon, word, is_plural))
        return out

    def mentioned(self, text: str) -> set[str]:
        return {m.category for m in self.mentions(text)}

    def names_of(self, objects) -> set[str]:
        """Annotation objects (["cup", ...] or [{"name"|"category": "cup", ...}, ...]) -> canonical names; names
        outside the vocabulary are kept as written (they still count as present)."""
        out = set()
        for o in objects:
            name = o if isinstance(o, str) else (o.get("name") or o.get("category")) if isinstance(o, dict) else None
            if not isinstance(name, str):
                raise ValueError(f"annotation object {o!r} has no name")
            out.add(self.canonical(name) or name.lower())
        return out


class Cooccurrence:
    """C[a][b] = number of images holding both a and b (a != b); freq[a] = images holding a."""

    def __init__(self, object_sets):
        self.pair, self.freq = {}, Counter()
        for objs in object_sets:
            objs = set(objs)
            self.freq.update(objs)
            for a in objs:
                row = self.pair.setdefault(a, Counter())
                row.update(b for b in objs if b != a)

    def weights(self, present, candidates) -> list[float]:
        """Co-occurrence with the present objects; frequency, then uniform, when that is zero for every candidate."""
        w = [float(sum(self.pair.get(p, {}).get(c, 0) for p in present)) for c in candidates]
        if not any(w):
            w = [float(self.freq[c]) for c in candidates]
        if not any(w):
            w = [1.0] * len(candidates)
        return w

    def sample_absent(self, present, candidates, rng: random.Random) -> str | None:
        candidates = [c for c in candidates if c not in present]
        if not candidates:
            return None
        return rng.choices(candidates, weights=self.weights(present, candidates))[0]


@dataclass
class Edit:
    text: str
    category: str  # object | omission | attribute | relation | count
    detail: str  # human-readable: "inserted dog", "red -> blue", ...


def _word_re(words):
    return re.compile(r"\b(" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + r")\b", re.I)


def _other(word: str, words: list) -> list:
    """Replacements for `word` from `words`: for a size, the other size class ("small" -> "large", not "tiny")."""
    for mine, theirs in (SIZE_CLASSES, SIZE_CLASSES[::-1]):
        if word in mine and any(w in theirs for w in words):
            return [w for w in words if w in theirs]
    return [w for w in words if w != word]


def _case_like(new: str, old: str) -> str:
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


class RuleInjector:
    """Rewrites a ground-truth answer with one hallucination. The edit kinds are the functions below, one per kind
    (EDITS); this class draws which kind to try first, from `mix`, and falls through to the next when one does not
    apply. A short answer ("No.", "red.", "two.") gets its own edit, whatever the mix."""

    def __init__(self, vocab: Vocab, cooc: Cooccurrence, seed: int = 0, mix: dict | None = None):
        self.v, self.cooc, self.seed = vocab, cooc, seed
        self.mix = dict(mix or DEFAULT_MIX)
        bad = set(self.mix) - set(DEFAULT_MIX)
        if bad or not self.mix or any(w < 0 for w in self.mix.values()) or not any(self.mix.values()):
            raise ValueError(f"mix must give non-negative weights to {sorted(DEFAULT_MIX)}, got {mix}")
        self.color_re, self.size_re = _word_re(vocab.colors), _word_re(vocab.sizes)
        self.rel_re = _word_re(vocab.relations)
        num_words = [n for n in vocab.numbers if n in NUMBER_VALUES]
        self.num_re = re.compile(r"\b(" + "|".join(num_words + [r"\d+"]) + r")\b", re.I)

    def inject(self, text: str, present: set, key: str, instances: list | None = None) -> Edit | None:
        """A hallucinated rewrite of `text` (ground truth), or None when no rule applies. `present`: canonical
        objects in the image; `instances`: optional [{"category", "color", ...}] for attribute checks."""
        rng = random.Random(f"{self.seed}:{key}")
        short = short_answer(self, text, rng)
        if short is not None:
            return short
        kinds = [k for k, w in self.mix.items() if w > 0]
        order = []
        while kinds:  # a weighted random order; when the first kind does not apply, the next is tried
            k = rng.choices(kinds, weights=[self.mix[x] for x in kinds])[0]
            order.append(k)
            kinds.remove(k)
        for kind in order:
            edit = EDITS[kind](self, text, set(present), rng, instances or [])
            if edit is not None and edit.text != text:
                return edit
        return None


# Every edit kind below is a function (inj, text, present, rng, instances) -> Edit | None: `inj` gives the
# vocabulary, the co-occurrence statistics and the compiled word patterns; None = the kind does not apply to `text`.

# ------------------------------------------------------------------------------------------- short answers (QA turns)
def short_answer(inj: RuleInjector, text, rng):
    core = text.strip().rstrip(".!").strip()
    low = core.lower()
    if low in ("yes", "no"):  # an existence answer: "No." -> "Yes." claims an absent object
        new = _case_like("no" if low == "yes" else "yes", core)
        return Edit(text.replace(core, new, 1), "object", f"{core} -> {new}")
    for words, cat in ((inj.v.colors, "attribute"), (inj.v.sizes, "attribute"),
                       ([n for n in inj.v.numbers if n in NUMBER_VALUES], "count")):
        if low in words and len(words) > 1:
            new = _case_like(rng.choice(_other(low, words)), core)
            return Edit(text.replace(core, new, 1), cat, f"{core} -> {new}")
    return None


# ------------------------------------------------------------------------------------------- object: insert
def insert_object(inj: RuleInjector, text, present, rng, instances):
    """An absent object drawn by co-occurrence, put into the listing, or else said in an added sentence."""
    mentions = inj.v.mentions(text)
    said = {m.category for m in mentions}
    new = inj.cooc.sample_absent(present | said, inj.v.objects, rng)
    if new is None:
        return None
    listing = find_listing(text, mentions)
    if listing is not None:  # "with A , B and C ." -> the new object at a random place in the list
        start, end, parts, sep_spaced = listing
        parts.insert(rng.randint(0, len(parts)), f"{article(new)} {new}")
        comma = " , " if sep_spaced else ", "
        joined = comma.join(parts[:-1]) + " and " + parts[-1]
        return Edit(text[:start] + joined + text[end:], "object", f"inserted {new}")
    spaced = bool(re.search(r"\w \.", text))  # the toy grammar writes "plate ." with a space
    anchor = next((m.surface for m in mentions if not m.is_plural), None)
    where = f" next to the {anchor}" if anchor else ""
    sent = f"there is also {article(new)} {new}{where}" + (" ." if spaced else ".")
    if not text[:1].islower():
        sent = sent[0].upper() + sent[1:]
    body = text.rstrip()
    if body and body[-1] not in ".!?":
        body += " ." if spaced else "."
    return Edit(body + " " + sent + text[len(text.rstrip()):], "object", f"inserted {new}")


def find_listing(text, mentions):
    """(start, end, parts, spaced) of a "with <noun phrase>, ... and <noun phrase>" list whose every part ends
    in an object mention, or None."""
    m = re.search(r"\bwith (.+?)(?= ?[.;]|$)", text)
    if not m:
        return None
    body = m.group(1)
    spaced = " , " in text or bool(re.search(r"\w \.", text))  # the toy grammar's "a , b ." style
    parts = [p.strip() for p in re.split(r" ?, | and ", body) if p.strip()]
    ends = {mm.end - m.start(1) for mm in mentions if m.start(1) <= mm.start < m.end(1)}
    pos, ok = 0, True
    for p in parts:  # every part must end exactly where an object mention ends
        i = body.find(p, pos)
        pos = i + len(p)
        ok &= pos in ends and " " in p  # a determiner or a number in front: "a fork", "two cups"
    if not ok or not parts:
        return None
    return m.start(1), m.end(1), parts, spaced


# ------------------------------------------------------------------------------------------- object: swap
def swap_object(inj: RuleInjector, text, present, rng, instances):
    """A present (singular) object renamed as an absent one drawn by co-occurrence, in every mention."""
    mentions = inj.v.mentions(text)
    said = {m.category for m in mentions}
    singular = sorted(c for c in said if not any(m.is_plural for m in mentions if m.category == c))
    if not singular:
        return None
    old = rng.choice(singular)
    new = inj.cooc.sample_absent(present | said, inj.v.objects, rng)
    if new is None:
        return None
    out = text
    for m in sorted((m for m in mentions if m.category == old), key=lambda m: -m.start):  # back to front:
        out = fix_article(out[:m.start] + _case_like(new, m.surface) + out[m.end:], m.start)  # offsets hold
    return Edit(out, "object", f"{old} -> {new}")


# ------------------------------------------------------------------------------------------- omission
def omit_object(inj: RuleInjector, text, present, rng, instances):
    """One present object dropped from the listing, with every other sentence that names it ("with a plate , a
    fork and a cup . the fork is left of the plate ." -> "with a plate and a cup ."): POVID's GPT-4V rewrites
    also leave out what is there (the paper's example drops the sentence about the horse)."""
    mentions = inj.v.mentions(text)
    listing = find_listing(text, mentions)
    if listing is None or len(listing[2]) < 2:
        return None
    start, end, parts, spaced = listing
    named = [inj.v.mentions(p)[-1].category for p in parts]  # a listing part ends in its object's mention
    options = [i for i, c in enumerate(named) if c in present and named.count(c) == 1]
    if not options:
        return None
    i = rng.choice(options)
    gone = named[i]
    keep = parts[:i] + parts[i + 1:]
    comma = " , " if spaced else ", "
    joined = keep[0] if len(keep) == 1 else comma.join(keep[:-1]) + " and " + keep[-1]
    head, tail = text[:start] + joined, text[end:]
    # the listing's own sentence ends in `tail`'s first terminator; a later sentence naming the object goes
    first = re.match(r"[^.!?]*[.!?]?", tail).group(0)
    rest = [s for s in re.findall(r"\s*[^.!?]+(?:\s*[.!?])?", tail[len(first):])
            if gone not in inj.v.mentioned(s)]
    return Edit(head + first + "".join(rest), "omission", f"omitted {gone}")


# ------------------------------------------------------------------------------------------- attribute
def change_attribute(inj: RuleInjector, text, present, rng, instances):
    """A colour or size adjective of an object swapped for another, or a wrong colour put in front of an
    uncoloured first mention of an object whose true colours the annotations give."""
    mentions = inj.v.mentions(text)
    starts = {mm.start for mm in mentions}
    options = []
    for rx, words in ((inj.color_re, inj.v.colors), (inj.size_re, inj.v.sizes)):
        for m in rx.finditer(text):
            after = text[m.end():]
            nxt = re.match(r" (?:\w+ )?", after)  # an object within the next two words ...
            before = text[:m.start()].rstrip().lower()
            if (nxt and any(m.end() + k in starts for k in (1, nxt.end()))) or before.endswith((" is", " are")):
                options.append(("swap", m, words))  # ... or a predicate: "the cup is red"
    colours_of = {}
    for inst in instances:  # true colours per category: a wrong colour can be added where none is said
        if isinstance(inst, dict) and inst.get("color"):
            name = str(inst.get("category") or inst.get("name") or "")
            colours_of.setdefault(inj.v.canonical(name) or name, set()).add(str(inst["color"]).lower())
    first = {}
    for mm in mentions:
        first.setdefault(mm.category, mm)
    for mm in first.values():  # the first mention only: "the fork" later refers back to it
        prev = text[:mm.start].split()[-1:] or [""]
        if mm.category in colours_of and prev[0].lower() in ("a", "an", "the") and not mm.is_plural:
            options.append(("add", mm, colours_of[mm.category]))
    if not options:
        return None
    how, m, words = rng.choice(options)
    if how == "swap":
        old = m.group(1)
        choices = _other(old.lower(), words)
        if not choices:
            return None
        new = _case_like(rng.choice(choices), old)
        out = text[:m.start()] + new + text[m.end():]
        return Edit(fix_article(out, m.start()), "attribute", f"{old} -> {new}")
    wrong = [c for c in inj.v.colors if c not in words]
    if not wrong:
        return None
    new = rng.choice(wrong)
    out = text[:m.start] + new + " " + text[m.start:]
    return Edit(fix_article(out, m.start), "attribute", f"{m.surface} -> {new} {m.surface}")


def fix_article(text, at):
    """Make the article before position `at` agree with the word that now starts there."""
    m = re.search(r"\b(a|an|A|An) $", text[:at])
    if not m:
        return text
    want = article(text[at:])
    want = _case_like(want, m.group(1))
    return text[:m.start(1)] + want + " " + text[at:]


# ------------------------------------------------------------------------------------------- relation
def flip_relation(inj: RuleInjector, text, present, rng, instances):
    """One stated spatial relation swapped for its opposite ("left of" -> "right of"), else for another one."""
    hits = list(inj.rel_re.finditer(text))
    if not hits or len(inj.v.relations) < 2:
        return None
    m = rng.choice(hits)
    old = m.group(1).lower()
    opp = OPPOSITES.get(old)
    new = opp if opp in inj.v.relations else rng.choice([r for r in inj.v.relations if r != old])
    return Edit(text[:m.start()] + _case_like(new, m.group(1)) + text[m.end():], "relation", f"{old} -> {new}")


# ------------------------------------------------------------------------------------------- count
def change_count(inj: RuleInjector, text, present, rng, instances):
    """A number in front of a plural object changed ("two cups" -> "three cups"), or a single object made
    several ("a fork" -> "two forks") where no verb would have to agree."""
    mentions = inj.v.mentions(text)
    many = [n for n in inj.v.numbers if NUMBER_VALUES.get(n, 0) >= 2]
    if not many:
        return None
    options = []
    for m in inj.num_re.finditer(text):  # "two [small red] cups": another number >= 2
        for mm in mentions:
            gap = text[m.end():mm.start]
            if mm.is_plural and mm.start > m.end() and re.fullmatch(r"( \w+){0,2} ", gap):
                options.append(("number", m, mm))
                break
    for mm in mentions:  # "a [small red] fork": several of them
        if mm.is_plural:
            continue
        pre = re.search(r"\b(a|an|A|An)((?: \w+){0,2}) $", text[:mm.start])
        verb = re.match(r" (\w+)", text[mm.end:])
        subject = pre and re.fullmatch(r"(.*[.!?] )?", text[:pre.start()], re.S)  # would need verb agreement
        if pre and not subject and not (verb and verb.group(1).lower() in ("is", "was", "has")) \
                and all(w.lower() in inj.v.colors + inj.v.sizes for w in pre.group(2).split()):
            options.append(("article", pre, mm))
    if not options:
        return None
    how, m, mm = rng.choice(options)
    if how == "number":
        old = m.group(1)
        new = _case_like(rng.choice([n for n in many if n != old.lower()] or many), old)
        if new.lower() == old.lower():
            return None
        return Edit(text[:m.start()] + new + text[m.end():], "count", f"{old} -> {new}")
    new = _case_like(rng.choice(many), m.group(1))
    noun = plural(mm.surface, inj.v.plurals)
    out = text[:m.start(1)] + new + m.group(2) + " " + noun + text[mm.end:]
    return Edit(out, "count", f"{m.group(1)}{m.group(2)} {mm.surface} -> {new}{m.group(2)} {noun}")


# the mix's kind names -> their edits ("object" and "swap" both make POVID's object hallucinations: category "object")
EDITS = {"object": insert_object, "swap": swap_object, "omit": omit_object, "attribute": change_attribute,
         "relation": flip_relation, "count": change_count}


# ------------------------------------------------------------------------------------------- presence
def load_annotations(path, vocab: Vocab):
    """{image_id: {"objects": [...], "instances"?: [...]}} or [{"id"|"image_id", "objects"}] -> {key: (set, list)}."""
    raw = read_json(path)
    if isinstance(raw, list):
        keyed = {}
        for i, r in enumerate(raw):
            if not isinstance(r, dict) or r.get("id", r.get("image_id")) is None:
                raise ValueError(f"annotations {path}: item {i} has no 'id' or 'image_id'")
            keyed[str(r.get("id", r.get("image_id")))] = r
        raw = keyed
    if not isinstance(raw, dict):
        raise ValueError(f"annotations {path}: expected {{image_id: {{'objects': [...]}}}} or a list of records")
    out = {}
    for k, v in raw.items():
        objs = v.get("objects") if isinstance(v, dict) else v
        if not isinstance(objs, list):
            raise ValueError(f"annotations {path}: entry {k!r} has no 'objects' list")
        try:
            out[str(k)] = (vocab.names_of(objs), v.get("instances", []) if isinstance(v, dict) else [])
        except ValueError as e:
            raise ValueError(f"annotations {path}: entry {k!r}: {e}") from None
    return out


def presence(item, vocab, ann):
    """(objects in the image, instances, source): exact annotations, else the record's objects, else the text."""
    if ann is not None:
        base = item["id"].split("#")[0]
        stem = os.path.splitext(os.path.basename(item["image"]))[0]
        for key in (base, stem, os.path.basename(item["image"])):
            if key in ann:
                return ann[key][0], ann[key][1], "annotations"
    if isinstance(item.get("objects"), list):
        objs = item["objects"]
        return vocab.names_of(objs), [o for o in objs if isinstance(o, dict)], "record objects"
    return vocab.mentioned(item["answer"]), [], "answer text"
