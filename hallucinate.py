"""Making dispreferred answers: every way POVID and CLIP-DPO build the "rejected" side of a preference pair.

    python hallucinate.py api       --input DATA --output OUT.jsonl [--model gpt-4o --workers 8 --vision]
    python hallucinate.py rules     --input DATA --output OUT.jsonl --seed 0 [--annotations GT.json --vocab V.json]
    python hallucinate.py noise     --checkpoint CKPT --input DATA --output OUT.jsonl --t 500
    python hallucinate.py clip-rank --checkpoint CKPT --clip CLIPDIR --input DATA --output OUT.jsonl --samples 6

  api        POVID's GPT-4V step (Zhou et al. 2024, sec. 3.1) through any OpenAI-compatible chat endpoint
             (OPENAI_BASE_URL, OPENAI_API_KEY; chat_api.py retries, backs off, honours Retry-After, never logs
             the key): the ground-truth answer is rewritten with plausible hallucinations of three kinds
             (co-occurring but absent objects, changed attributes, wrong relations or counts); reasoning answers get
             their facts corrupted. The reply is structured JSON, validated, retried when malformed. Resumable.
  rules      an offline stand-in for the API: an absent object is drawn in proportion to its co-occurrence with
             the objects present (counted from the data's own annotations, or from its captions), and inserted;
             or a colour/size, a left/right relation or a count is swapped from word lists. Deterministic.
  noise      POVID's second source (sec. 3.2): the model's own free answer when the image is DDPM-noised, for a
             static pair file. (Online, in training, `noise_triggered_tokens` does the teacher-forced version.)
  clip-rank  CLIP-DPO (Ouali et al. 2024, sec. 3): K sampled answers per image, each scored by CLIP as the mean
             image-sentence similarity over its sentences (CLIP's text tower sees at most 77 tokens), filtered
             (empty, duplicate, minimum score, length ratio, chosen-rejected margin); best vs worst is the pair.

DATA: LLaVA conversation JSON (prompt = first human turn, answer = first gpt turn) or JSONL with id, image,
prompt/question and answer. Output: preference JSONL rows {id, image, prompt, chosen, rejected, strategy, category},
image paths relative to the output file, so several strategies' files can be concatenated into one training file.
A malformed input line (named by number) or a missing image (named by path) is skipped and counted; the summary at
the end lists done, skipped and failed items with reasons.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict

import torch

# ------------------------------------------------------------------------------------------- input and output
DEFAULT_VOCAB = {  # COCO-ish defaults for data without a vocab file
    "objects": ["person", "car", "dog", "cat", "bird", "chair", "table", "cup", "bottle", "bowl", "fork", "knife",
                "spoon", "plate", "book", "laptop", "tv", "couch", "bed", "bench", "tree", "traffic light", "bus",
                "bicycle", "umbrella", "handbag", "clock", "vase", "ball", "kite"],
    "colors": ["red", "blue", "green", "yellow", "white", "black", "orange", "brown", "gray", "pink"],
    "sizes": ["small", "large"], "relations": ["left of", "right of"],
    "numbers": ["one", "two", "three", "four"], "synonyms": {"man": "person", "woman": "person", "mug": "cup"},
}


class Summary:
    def __init__(self):
        self.done, self.skipped, self.failed = 0, Counter(), Counter()
        self.examples = {}

    def skip(self, reason, where):
        self.skipped[reason] += 1
        self.examples.setdefault(reason, where)

    def __str__(self):
        s = [f"done {self.done}, skipped {sum(self.skipped.values())}, failed {sum(self.failed.values())}"]
        s += [f"  skipped {n} x {r} (first: {self.examples[r]})" for r, n in self.skipped.most_common()]
        s += [f"  failed {n} x {r}" for r, n in self.failed.most_common()]
        return "\n".join(s)


def read_items(path: str, summary: Summary):
    """-> [{id, image (absolute), prompt, answer}], bad lines and missing images counted in `summary`."""
    root = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        text = f.read()
    raw = []
    if text.lstrip().startswith("["):
        raw = [(f"{path}: item {i}", r) for i, r in enumerate(json.loads(text))]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raw.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    summary.skip(f"malformed JSON line ({e.msg})", f"{path}:{n}")
    items = []
    for where, r in raw:
        try:
            if "conversations" in r:
                prompt, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
            else:
                prompt, answer = r.get("prompt", r.get("question")), r.get("answer", r.get("chosen"))
            image = r["image"]
        except (KeyError, IndexError, TypeError) as e:
            summary.skip(f"malformed record (missing {e})", where)
            continue
        if prompt is None or answer is None:
            summary.skip("malformed record (no prompt or answer)", where)
            continue
        image = image if os.path.isabs(image) else os.path.join(root, image)
        if not os.path.isfile(image):
            summary.skip("missing image", image)
            continue
        items.append({"id": str(r.get("id", where)), "image": image, "prompt": prompt, "answer": answer})
    return items


def out_row(item, rejected, strategy, category, output, chosen=None):
    rel = os.path.relpath(item["image"], os.path.dirname(os.path.abspath(output)))
    return {"id": f"{item['id']}:{strategy}", "image": rel, "prompt": item["prompt"],
            "chosen": item["answer"] if chosen is None else chosen, "rejected": rejected, "strategy": strategy,
            "category": category}


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)


# ------------------------------------------------------------------------------------------- rules
class RuleInjector:
    """Offline hallucination injection from co-occurrence statistics and word lists."""

    def __init__(self, vocab: dict, annotations: dict | None, items, seed: int):
        self.v = vocab
        self.names = {o: o for o in vocab["objects"]} | {s: c for s, c in vocab.get("synonyms", {}).items()}
        self.ann = annotations
        self.seed = seed
        self.cooc = defaultdict(Counter)  # cooc[a][b]: images holding both a and b
        self.freq = Counter()
        for it in items:
            objs = self.objects_of(it)
            self.freq.update(objs)
            for a in objs:
                for b in objs:
                    if a != b:
                        self.cooc[a][b] += 1

    def mentioned(self, text):
        """Categories a text names (two-word names first; plural 's' stripped)."""
        words = re.findall(r"[a-z]+", text.lower())
        found, i = set(), 0
        while i < len(words):
            two = " ".join(words[i:i + 2])
            for cand in (two, two[:-1] if two.endswith("s") else None):
                if cand in self.names:
                    found.add(self.names[cand])
                    i += 2
                    break
            else:
                for cand in (words[i], words[i][:-1], words[i][:-2]):
                    if cand in self.names:
                        found.add(self.names[cand])
                        break
                i += 1
        return found

    def objects_of(self, item):
        if self.ann is not None and item["id"] in self.ann:
            return set(self.ann[item["id"]]["objects"])
        return self.mentioned(item["answer"])

    def pick_absent(self, present, rng):
        """An absent object, drawn in proportion to its co-occurrence with the present ones (+1 smoothing for
        frequent objects, so an image whose objects never co-occurred with anything still gets one)."""
        cands = [o for o in self.v["objects"] if o not in present]
        if not cands:
            return None
        w = [sum(self.cooc[p][c] for p in present) * 10 + (1 if self.freq[c] else 0.1) for c in cands]
        return rng.choices(cands, weights=w)[0]

    def inject(self, item):
        rng = random.Random(f"{self.seed}:{item['id']}")
        text, present = item["answer"], self.objects_of(item)
        options = [("object", 0.6), ("attribute", 0.2), ("relation", 0.1), ("count", 0.1)]
        order = sorted(options, key=lambda o: -o[1] * rng.random())  # weighted random order, fall through
        for kind, _ in order:
            out = getattr(self, f"_{kind}")(text, present, rng)
            if out and out != text:
                return out, kind
        return None, None

    def _object(self, text, present, rng):
        c = self.pick_absent(present, rng)
        if c is None:
            return None
        art = "an" if c[0] in "aeiou" else "a"
        m = re.match(r"^(.*? with )(.*?)( \.)(.*)$", text)
        if m:  # a listing "with A , B and C ." (the toy grammar): insert at a random place in the list
            parts = m.group(2).replace(" and ", " , ").split(" , ")
            parts.insert(rng.randint(0, len(parts)), f"{art} {c}")
            lst = parts[0] if len(parts) == 1 else " , ".join(parts[:-1]) + " and " + parts[-1]
            return m.group(1) + lst + m.group(3) + m.group(4)
        anchor = sorted(present)[0] if present else None
        rel = rng.choice(self.v["relations"])
        extra = f"There is also {art} {c}" + (f" {rel} the {anchor}." if anchor else ".")
        sep = "" if text.endswith((" ", "\n")) else " "
        return text + sep + extra

    def _swap(self, text, words, rng):
        hits = [w for w in words if re.search(rf"\b{re.escape(w)}\b", text)]
        if not hits:
            return None
        w = rng.choice(hits)
        new = rng.choice([x for x in words if x != w])
        spans = [m.span() for m in re.finditer(rf"\b{re.escape(w)}\b", text)]
        s, e = rng.choice(spans)
        return text[:s] + new + text[e:]

    def _attribute(self, text, present, rng):
        return self._swap(text, self.v["colors"], rng) or self._swap(text, self.v["sizes"], rng)

    def _relation(self, text, present, rng):
        return self._swap(text, self.v["relations"], rng)

    def _count(self, text, present, rng):
        return self._swap(text, self.v["numbers"], rng)


def cmd_rules(a):
    s = Summary()
    items = read_items(a.input, s)
    vocab = DEFAULT_VOCAB
    if a.vocab:
        with open(a.vocab) as f:
            vocab = {**DEFAULT_VOCAB, **json.load(f)}
    ann = None
    if a.annotations:
        with open(a.annotations) as f:
            raw = json.load(f)
        ann = {str(r.get("id", r.get("image_id"))): r for r in raw} if isinstance(raw, list) else raw
    inj = RuleInjector(vocab, ann, items, a.seed)
    rows, cats = [], Counter()
    for it in items:
        rej, kind = inj.inject(it)
        if rej is None:
            s.skip("nothing to change", it["id"])
            continue
        rows.append(out_row(it, rej, "rules", kind, a.output))
        cats[kind] += 1
        s.done += 1
    write_jsonl(a.output, rows)
    print(f"rules: {dict(cats)} -> {a.output}\n{s}")


# ------------------------------------------------------------------------------------------- noise-triggered
@torch.no_grad()
def noise_triggered_tokens(model, input_ids, labels, noisy_pixel_values, attention_mask=None):
    """POVID stage 2's dispreferred answer, made online: teacher-force the preferred answer under the *noisy*
    image and take the greedy token at every answer position. Returns labels-shaped (B, T) ids: at positions
    with labels != -100, the argmax predicted from the previous position; -100 elsewhere. The trainer scores these
    tokens under the clean image (so positions where noise did not change the prediction cancel in the DPO
    margin, and only the prior-driven changes count)."""
    h = model.hidden_states(input_ids, noisy_pixel_values, attention_mask)  # (B, T, D)
    out = torch.full_like(labels, -100)
    pos = (labels[:, 1:] != -100).nonzero()  # (K, 2): batch index, position - 1
    if len(pos):
        logits = model.lm_head(h[pos[:, 0], pos[:, 1]])  # (K, V): only the scored rows
        out[pos[:, 0], pos[:, 1] + 1] = logits.argmax(-1)
    return out


def load_llava(path, device="cpu"):
    from model import Llava, Tokenizer
    m = Llava.from_pretrained(path, device=device)
    return m, Tokenizer.from_pretrained(path)


def generate_answers(model, tok, items, pixels, template, max_new_tokens, temperature=0.0, top_p=1.0,
                     generator=None, batch_size=32):
    from model.tokenizer import pad_sequences
    outs = []
    n_img = model.config.num_image_tokens
    for k in range(0, len(items), batch_size):
        chunk = items[k:k + batch_size]
        ids, mask = pad_sequences([tok.encode_prompt(it["prompt"], n_img, template=template) for it in chunk],
                                  tok.pad_id, side="left")
        gen = model.generate(ids, pixels[k:k + batch_size], mask, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_p=top_p, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                             generator=generator)
        outs += [tok.decode(g).strip() for g in gen]
    return outs


def cmd_noise(a):
    from model import load_image
    from model.image import open_image, pil_from_tensor01, pil_to_tensor01
    from noise import NoiseSchedule, noise_image
    s = Summary()
    items = read_items(a.input, s)
    model, tok = load_llava(a.checkpoint)
    sched = NoiseSchedule(a.schedule, 1000, 1e-5, 5e-3)
    gen = torch.Generator().manual_seed(a.seed)
    pad = model.config.image_aspect_ratio == "pad"
    px = torch.stack([load_image(pil_from_tensor01(noise_image(pil_to_tensor01(open_image(it["image"]).convert(
        "RGB")), a.t, sched, gen)), model.config.image_size, pad=pad) for it in items])
    answers = generate_answers(model, tok, items, px, a.template, a.max_new_tokens)
    rows = []
    for it, ans in zip(items, answers):
        if not ans.strip() or ans.strip() == it["answer"].strip():
            s.skip("noisy answer empty or equal to the ground truth", it["id"])
            continue
        rows.append(out_row(it, ans, "noise", f"noise_t{a.t}", a.output))
        s.done += 1
    write_jsonl(a.output, rows)
    print(f"noise t={a.t} -> {a.output}\n{s}")


# ------------------------------------------------------------------------------------------- clip-rank
def split_sentences(text):
    return [x.strip() for x in re.split(r"(?<=[.!?])\s+", text.strip()) if x.strip(" .")]


@torch.no_grad()
def clip_scores(clip, ctok, pixel_values, answers):
    """Mean over sentences of 100 * cos(image, sentence) for each answer; pixel_values (N, 3, S, S) one per answer."""
    import torch.nn.functional as F
    from model.tokenizer import pad_sequences
    img = F.normalize(clip.encode_image(pixel_values), dim=-1)  # (N, P)
    maxlen = clip.config.text.max_position_embeddings
    sents, owner = [], []
    for i, ans in enumerate(answers):
        for sent in split_sentences(ans) or [ans]:
            ids = ctok.encode(sent)[: maxlen - 2]  # CLIP's 77-token (here: max_position) limit, per sentence
            sents.append(([ctok.bos_id] if ctok.bos_id is not None else []) + ids + [ctok.eos_id])
            owner.append(i)
    ids, mask = pad_sequences(sents, ctok.pad_id, side="right")
    txt = F.normalize(clip.encode_text(ids, mask), dim=-1)  # (S, P)
    owner = torch.tensor(owner)
    sim = 100 * (img[owner] * txt).sum(-1)  # (S,)
    return torch.zeros(len(answers)).index_add_(0, owner, sim) / torch.bincount(owner, minlength=len(answers))


def rank_pairs(answers, scores, min_score, min_margin, max_len_ratio, counts: Counter):
    """Filters of CLIP-DPO's rule-based selection; returns (chosen, rejected, s_c, s_r) or None. `counts` records
    how many candidates (or items) each filter removed."""
    cands, seen = [], set()
    for ans, sc in zip(answers, scores):
        if not ans.strip():
            counts["empty"] += 1
        elif ans in seen:
            counts["duplicate"] += 1
        else:
            seen.add(ans)
            cands.append((ans, float(sc)))
    if len(cands) < 2:
        counts["item: fewer than 2 distinct answers"] += 1
        return None
    cands.sort(key=lambda x: -x[1])
    best = cands[0]
    if best[1] < min_score:
        counts["item: best below min score"] += 1
        return None
    for ans, sc in reversed(cands[1:]):  # the worst candidate that passes the length-ratio rule
        lb, la = len(best[0].split()), len(ans.split())
        if max(lb, la) / max(1, min(lb, la)) > max_len_ratio:
            counts["length ratio"] += 1
            continue
        if best[1] - sc < min_margin:
            counts["item: margin below minimum"] += 1
            return None
        return best[0], ans, best[1], sc
    counts["item: no rejected within length ratio"] += 1
    return None


def cmd_clip_rank(a):
    from model import CLIPModel, Tokenizer, load_image
    s = Summary()
    items = read_items(a.input, s)[: a.limit or None]
    model, tok = load_llava(a.checkpoint)
    clip, ctok = CLIPModel.from_pretrained(a.clip), Tokenizer.from_pretrained(a.clip)
    pad = model.config.image_aspect_ratio == "pad"
    gen = torch.Generator().manual_seed(a.seed)
    counts, rows = Counter(), []
    t0 = time.time()
    for k in range(0, len(items), a.batch_size):
        chunk = items[k:k + a.batch_size]
        rep = [it for it in chunk for _ in range(a.samples)]  # K samples per image
        px = torch.stack([load_image(it["image"], model.config.image_size, pad=pad) for it in rep])
        answers = generate_answers(model, tok, rep, px, a.template, a.max_new_tokens, a.temperature, a.top_p, gen,
                                   batch_size=len(rep))
        cpx = torch.stack([load_image(it["image"], clip.config.vision.image_size, pad=True) for it in rep])
        scores = clip_scores(clip, ctok, cpx, answers)
        for i, it in enumerate(chunk):
            sl = slice(i * a.samples, (i + 1) * a.samples)
            pair = rank_pairs(answers[sl], scores[sl].tolist(), a.min_score, a.min_margin, a.max_len_ratio, counts)
            if pair is None:
                s.skip("filtered (see counts)", it["id"])
                continue
            row = out_row(it, pair[1], "clip-rank", "clip", a.output, chosen=pair[0])
            row.update(chosen_score=pair[2], rejected_score=pair[3])
            rows.append(row)
            s.done += 1
        print(f"clip-rank: {min(k + a.batch_size, len(items))}/{len(items)} images, {len(rows)} pairs "
              f"({time.time() - t0:.0f}s)", flush=True)
    write_jsonl(a.output, rows)
    print("clip-rank filters removed: " + ", ".join(f"{r}: {n}" for r, n in counts.most_common()) + f"\n{s}")


# ------------------------------------------------------------------------------------------- api
SYSTEM_PROMPT = (
    "You rewrite answers about images to create realistic *hallucinated* versions for preference training. "
    "Keep the style, length and most of the wording; introduce one to three errors a vision-language model would "
    "plausibly make: (1) object: mention an object that often co-occurs with what is there but is absent; "
    "(2) attribute: change a colour, size, material or state; (3) relation: change a spatial relation, action or "
    "count. For a reasoning answer, corrupt the facts its reasoning relies on so the conclusion is wrong. "
    'Reply with JSON only: {"hallucinated": "<the rewritten answer>", "categories": ["object"|"attribute"|'
    '"relation"|"count", ...], "changes": ["<what you changed>", ...]}')


def parse_api_reply(text: str, original: str):
    """-> (hallucinated, category) or raise ValueError (the client then retries)."""
    t = text.strip()
    if t.startswith("```"):
        t = t.strip("`").split("\n", 1)[-1]
    obj = json.loads(t)
    hal = obj.get("hallucinated")
    if not isinstance(hal, str) or not hal.strip():
        raise ValueError("no 'hallucinated' string")
    if hal.strip() == original.strip():
        raise ValueError("hallucinated answer equals the original")
    cats = obj.get("categories") or []
    ok = [c for c in cats if c in ("object", "attribute", "relation", "count")]
    return hal.strip(), "+".join(ok) or "unspecified"


def cmd_api(a):
    from chat_api import ChatClient, image_data_url, run_jsonl_jobs
    s = Summary()
    items = read_items(a.input, s)
    client = ChatClient(backoff_s=a.backoff)

    def work(it):
        content = [{"type": "text", "text": f"Question: {it['prompt']}\nGround-truth answer: {it['answer']}"}]
        if a.vision:
            content.append({"type": "image_url", "image_url": {"url": image_data_url(it["image"])}})
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]

        def validate(text):
            try:
                parse_api_reply(text, it["answer"])
            except (ValueError, json.JSONDecodeError) as e:
                return f"bad reply: {e}"
            return None

        reply = client.chat(msgs, model=a.model, temperature=0.7, max_tokens=a.max_tokens, timeout=a.timeout,
                            validate=validate)
        hal, cat = parse_api_reply(reply, it["answer"])
        return out_row(it, hal, "api", cat, a.output)

    summary = run_jsonl_jobs(items, key_fn=lambda it: f"{it['id']}:api", work_fn=work, output_path=a.output,
                             workers=a.workers)
    print(f"api -> {a.output}\n{summary}\ninput: {s}")


# ------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("api", "rules", "noise", "clip-rank"):
        q = sub.add_parser(name)
        q.add_argument("--input", required=True)
        q.add_argument("--output", required=True)
        q.add_argument("--seed", type=int, default=0)
        if name == "api":
            q.add_argument("--model", default="gpt-4o")
            q.add_argument("--workers", type=int, default=8)
            q.add_argument("--vision", action="store_true", help="send the image as a base64 data URL")
            q.add_argument("--max-tokens", type=int, default=512)
            q.add_argument("--timeout", type=float, default=60.0)
            q.add_argument("--backoff", type=float, default=1.0, help="base of the exponential backoff (s)")
        if name == "rules":
            q.add_argument("--annotations", default=None, help="exact objects per image id (else: from captions)")
            q.add_argument("--vocab", default=None, help="JSON word lists (objects, colors, sizes, relations, ...)")
        if name in ("noise", "clip-rank"):
            q.add_argument("--checkpoint", required=True)
            q.add_argument("--template", default="llava_hf")
            q.add_argument("--max-new-tokens", type=int, default=64)
        if name == "noise":
            q.add_argument("--t", type=int, default=500)
            q.add_argument("--schedule", default="sigmoid")
        if name == "clip-rank":
            q.add_argument("--clip", required=True)
            q.add_argument("--samples", type=int, default=6)
            q.add_argument("--temperature", type=float, default=1.0)
            q.add_argument("--top-p", type=float, default=0.95)
            q.add_argument("--min-score", type=float, default=0.0)
            q.add_argument("--min-margin", type=float, default=1.0)
            q.add_argument("--max-len-ratio", type=float, default=2.0)
            q.add_argument("--batch-size", type=int, default=16, help="images per generation batch")
            q.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    a = p.parse_args(argv)
    {"api": cmd_api, "rules": cmd_rules, "noise": cmd_noise, "clip-rank": cmd_clip_rank}[a.cmd](a)


if __name__ == "__main__":
    main(sys.argv[1:])
