"""Making dispreferred answers: every way POVID and CLIP-DPO build the "rejected" side of a preference pair.

    python hallucinate.py api       --input DATA --output OUT.jsonl [--model gpt-4o --workers 8 --vision]
    python hallucinate.py rules     --input DATA --output OUT.jsonl --seed 0 [--annotations GT.json --vocab V.json]
    python hallucinate.py noise     --checkpoint CKPT --input DATA --output OUT.jsonl --t 500
    python hallucinate.py clip-rank --checkpoint CKPT --clip CLIPDIR --input DATA --output OUT.jsonl --samples 6

  api        POVID's GPT-4V step (Zhou et al. 2024, sec. 3.1) through any OpenAI-compatible /v1/chat/completions
             endpoint (OPENAI_BASE_URL, OPENAI_API_KEY; the key is never printed or written). Captions get
             plausible hallucinations of three kinds (co-occurring but absent objects, changed attributes, wrong
             relations or counts); reasoning answers get the facts their reasoning uses corrupted. The reply is JSON,
             validated; chat_api.py retries 429/5xx/timeouts/malformed replies with backoff and jitter, honours
             Retry-After, records a per-item failure instead of aborting, and appends one line per finished item,
             so a killed run resumes where it stopped (rerun the same command).
  rules      the offline stand-in for the API (hallucinate_rules.py): co-occurrence statistics of the data decide which
             absent object to insert; attribute, relation and count swaps from word lists. Deterministic.
  noise      POVID's second source (sec. 3.2) for a static pair file: the model's own free answer when the image
             is DDPM-noised (noise.py). In training, `noise_triggered_tokens` below makes it online.
  clip-rank  CLIP-DPO (Ouali et al. 2024, sec. 3): K sampled answers per image (one prefill per image, its KV cache
             shared by the K samples, each sample seeded from (--seed, image id, k)), each scored with CLIP as the
             mean over its sentences of 100 * cos(image, sentence) (a sentence fits CLIP's 77-token window; CSR
             scores sentence by sentence too), then rule-based filters (hallucinate_clip.py): empty, duplicate,
             chosen below --min-score, length ratio above --max-len-ratio, chosen - rejected margin below
             --min-margin. The best answer is chosen, the worst one that passes the filters rejected.

noise and clip-rank are long GPU jobs: each finished image is appended to OUTPUT.parts/ (under torchrun the ranks
share the images), a rerun of the same command - with any --batch-size or number of processes - does only the
images left and writes what an uninterrupted run writes; OUTPUT appears, in input order, when every image is done,
and the parts are removed. A rerun with other settings (OUTPUT.parts/settings.json records them: the
checkpoints' fingerprints, decoding and noise values) refuses rather than mix two runs in one file.
--kv-cache-gb bounds the generation cache (a batch that needs more runs in parts).

DATA (read by hallucinate_data.py): LLaVA conversation JSON (prompt = a human turn, answer = the gpt turn after
it; the first pair only unless --all-turns), COCO captions files (clip-rank's prompt pool) or JSONL of {id, image,
prompt|question, answer?, objects?}. Output: preference JSONL rows {id, image, prompt, chosen, rejected, strategy,
category, ...}, image paths relative to the output file, ids suffixed with the strategy, so files from several
strategies concatenate into one training file. A malformed JSONL line (named by line number), a record without
image/prompt/answer or a missing image (named by path) is skipped and counted; the summary printed at the end counts
every input item as done, skipped or failed, with reasons. A bad flag value is one line naming it, exit 1; so is a
run that wrote no row.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections import Counter

import torch
import torch.nn.functional as F

from hallucinate_clip import clip_scores, rank_pairs, split_sentences
from hallucinate_data import ItemLog, Summary, out_row, read_items
from hallucinate_rules import Cooccurrence, RuleInjector, Vocab, load_annotations, presence
from model.files import read_json, write_jsonl
from model.tokenizer import DEFAULT_TEMPLATE, TEMPLATES


# ------------------------------------------------------------------------------------------- rules
def cmd_rules(a):
    s = Summary()
    vocab = Vocab(read_json(a.vocab) if a.vocab else None)
    items = read_items(a.input, s, all_turns=a.all_turns, image_root=a.image_root)
    ann = load_annotations(a.annotations, vocab) if a.annotations else None
    pres = [presence(it, vocab, ann) for it in items]
    per_image = {}  # one object set per image, so an image with several turns (--all-turns) counts once
    for it, p in zip(items, pres):
        per_image.setdefault(it["image"], set()).update(p[0])
    cooc = Cooccurrence(per_image.values())  # from the input's own images only (no test-set statistics)
    mix = None
    if a.mix:
        try:
            mix = {k.strip(): float(w) for k, w in (kv.split("=") for kv in a.mix.split(","))}
        except ValueError:
            raise ValueError(f"--mix {a.mix!r}: expected kind=weight pairs, e.g. object=0.5,attribute=0.5") from None
    inj = RuleInjector(vocab, cooc, a.seed, mix)
    rows, cats, sources = [], Counter(), Counter(p[2] for p in pres)
    for it, (present, instances, _) in zip(items, pres):
        edit = inj.inject(it["answer"], present, it["id"], instances)
        if edit is None:
            s.skip("no rule applies", it["id"])
            continue
        rows.append(out_row(it, edit.text, "rules", edit.category, a.output, edit=edit.detail))
        cats[edit.category] += 1
        s.done += 1
    write_jsonl(a.output, rows)
    print(f"rules -> {a.output}: {dict(cats)}; objects present from {dict(sources)}\n{s}")
    return nothing_written(s) if not rows else 0


# ------------------------------------------------------------------------------------------- noise-triggered
@torch.no_grad()
def noise_triggered_tokens(model, input_ids, labels, noisy_pixel_values, attention_mask=None, rows=None,
                           image_features=None):
    """POVID stage 2's dispreferred answer, made online (Zhou et al. 2024, sec. 3.2): teacher-force the preferred
    answer under the *noisy* image and take the greedy token at every answer position.

    input_ids, labels: (B, T), labels -100 where not scored; noisy_pixel_values (B_img, 3, S, S).
    Returns (B, T) long: at positions with labels != -100 the argmax predicted from the previous position, -100
    elsewhere. The trainer scores these tokens under the *clean* image (sharing the chosen sequence's clean forward),
    so positions where the noise did not change the prediction cancel in the DPO margin. rows: the flat (B * T)
    indices of the positions with labels[t + 1] != -100 when the caller knows them on the host (training's
    collate): then nothing is read back from the device. image_features: the noisy images' features, computed
    beforehand (Llava.embed)."""
    h = model.hidden_states(input_ids, noisy_pixel_values, attention_mask, image_features)  # (B, T, D)
    return greedy_tokens(model.lm_head, h, labels, rows)


@torch.no_grad()
def greedy_tokens(lm_head, h, labels, rows=None):
    """h (B, T, D) -> (B, T): at each scored position (labels != -100) the argmax of the head at the position
    before it; -100 elsewhere. rows as in noise_triggered_tokens."""
    B, T, D = h.shape
    if rows is None:
        rows = (F.pad(labels[:, 1:], (0, 1), value=-100) != -100).flatten().nonzero()[:, 0]  # (K,)
    out = torch.full_like(labels, -100).flatten()
    logits = lm_head(h.reshape(B * T, D)[rows])  # (K, V): only the scored rows, not (B, T, V)
    return out.index_put((rows + 1,), logits.argmax(-1)).view(B, T)  # position t predicts the token at t + 1


def resolve_runtime(a, local_rank: int = 0):
    """--device auto -> cuda (this process's GPU under torchrun) when there is one, else cpu; --dtype auto ->
    bfloat16 on CUDA, float32 on the CPU. Sets a.device / a.dtype to the concrete choice."""
    if a.device == "auto":
        a.device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if a.dtype == "auto":
        a.dtype = "bfloat16" if a.device.startswith("cuda") else "float32"


def load_llava(a):
    """The checkpoint (llava-hf, or liuhaotian + --vision-tower) and its tokenizer; the preprocessing follows the
    checkpoint's image_aspect_ratio unless --image-aspect-ratio says otherwise (a.pad)."""
    from model import Llava, Tokenizer
    model = Llava.from_pretrained(a.checkpoint, dtype=getattr(torch, a.dtype), device=a.device,
                                  vision_tower=a.vision_tower).eval()
    a.pad = (a.image_aspect_ratio or model.config.image_aspect_ratio) == "pad"
    return model, Tokenizer.from_pretrained(a.tokenizer or a.checkpoint)


def generate_answers(model, tok, prompts, pixels, template, max_new_tokens, temperature=0.0, top_p=1.0,
                     generators=None, samples=1, cache_gb=None):
    """`samples` generated answers per (prompt, image), prompt-major; pixels (N, 3, S, S). Each prompt is run once
    and its samples share its KV cache; prompts go to the model in groups whose cache fits `cache_gb` GiB. With
    one generator per answer (generators, N * samples of them) an answer does not depend on the grouping."""
    from model.llama import KVCache
    from model.tokenizer import pad_sequences
    c, n_img = model.config.text, model.config.num_image_tokens
    p0 = next(model.parameters())
    enc = [tok.encode_prompt(p, n_img, template=template) for p in prompts]
    budget = float("inf") if cache_gb is None else cache_gb * 2 ** 30
    groups, start = [], 0
    for i in range(1, len(enc) + 1):  # the longest run of prompts from `start` whose cache fits (at least one)
        T = max(len(e) for e in enc[start:i + 1]) if i < len(enc) else 0
        if i == len(enc) or KVCache.nbytes(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, p0.dtype,
                                           i + 1 - start, T, samples, max_new_tokens) > budget:
            groups.append((start, i))
            start = i
    answers = []
    for a, b in groups:
        ids, mask = pad_sequences(enc[a:b], tok.pad_id, side="left")  # (n, T) each
        gen = model.generate(ids.to(p0.device), pixels[a:b].to(p0.device, p0.dtype), mask.to(p0.device),
                             max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, samples=samples,
                             eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, vocab_size=tok.vocab_size,
                             generator=None if generators is None else generators[a * samples:b * samples])
        answers += [tok.decode(g.tolist()).strip() for g in gen.cpu()]
    return answers


def pixels_for(items, size, pad, transform=None):
    """(usable items, (N, 3, S, S) pixels or None, [(item, why)] of the unreadable ones). transform(img, item)
    edits an image before preprocessing (the noise command's noising)."""
    from model import load_image
    from model.image import open_image
    ok, px, bad = [], [], []
    for it in items:
        try:
            img = open_image(it["image"]).convert("RGB")
        except (OSError, ValueError) as e:
            bad.append((it, f"{it['image']} ({e})"))
            continue
        ok.append(it)
        px.append(load_image(transform(img, it) if transform else img, size, pad=pad))
    return ok, (torch.stack(px) if px else None), bad


def _distributed():
    """(rank, world, local_rank) under torchrun (a gloo group for the barriers), else (0, 1, 0)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return 0, 1, 0
    import torch.distributed as dist
    if not dist.is_initialized():  # its barriers wait for the slowest rank's share: hours, not the default 30 min
        from datetime import timedelta
        dist.init_process_group("gloo", timeout=timedelta(hours=48))
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


# what a resumed noise / clip-rank run may change: how the work is split and where it runs (each answer is seeded
# from its item, so the batch, the number of processes and the GPU index change no byte), and where the files are
RESUMABLE_WITH_OTHER = {"output", "input", "image_root", "recipe", "batch_size", "kv_cache_gb", "device", "limit"}


def run_settings(a) -> dict:
    """Everything else that makes a noise / clip-rank record, recorded in OUTPUT.parts/settings.json and compared
    when a run resumes; checkpoints by fingerprint (model.files: a copy elsewhere is the same model, retrained
    weights at the same path are not)."""
    from model.files import fingerprint
    out = {}
    for k, v in sorted(vars(a).items()):
        if k in RESUMABLE_WITH_OTHER or k in ("clip_model", "pad"):  # loaded / derived values, not flags
            continue
        if k in ("checkpoint", "vision_tower", "tokenizer", "clip") and v:  # model directories
            if not os.path.isdir(v):
                raise ValueError(f"--{k.replace('_', '-')} {v}: no such directory")
            v = fingerprint(v)
        out[k] = v
    return out


def run_items(a, name, items, work, transform=None):
    """The resumable loop of the long jobs: the items not yet in OUTPUT.parts/ (hallucinate_data.ItemLog), split
    over the torchrun ranks item by item, in batches of --batch-size images; work(a, model, tok, chunk, px) -> one
    record per item of the chunk. Returns the ItemLog on rank 0 (every rank finished), None on the others."""
    rank, world, local = _distributed()
    resolve_runtime(a, local)
    log = ItemLog(a.output, rank)
    settings = run_settings(a)
    done = log.read()
    log.check_settings(settings, done)
    if rank == 0:  # before any rank can add an item (the barrier below)
        log.write_settings(settings, done)
    if world > 1:  # every rank reads the same progress before any rank adds to it
        import torch.distributed as dist
        dist.barrier()
    todo = [it for it in items if it["id"] not in done]
    mine = todo[rank::world]
    if rank == 0:
        print(f"{name}: {len(items)} items, {len(items) - len(todo)} done before, {len(todo)} to go over {world} "
              f"process(es)", flush=True)
    if mine:
        model, tok = load_llava(a)
        t0 = time.time()
        with log.appender() as out:
            for k in range(0, len(mine), a.batch_size):
                chunk, px, bad = pixels_for(mine[k:k + a.batch_size], model.config.image_size, a.pad, transform)
                recs = work(a, model, tok, chunk, px) if chunk else []
                recs += [{"id": it["id"], "rows": [], "skips": [["unreadable image", why]]} for it, why in bad]
                for r in recs:
                    out.write(r)
                if rank == 0:
                    print(f"{name} rank 0: {min(k + a.batch_size, len(mine))}/{len(mine)} items "
                          f"({time.time() - t0:.0f}s)", flush=True)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    return log if rank == 0 else None


def nothing_written(s: Summary) -> int:
    print(f"error: no rows written: {sum(s.skipped.values())} items skipped, {sum(s.failed.values())} failed "
          "(see above)", file=sys.stderr)
    return 1


def finish(a, name, items, s: Summary, log, **extra) -> int:
    """Write OUTPUT, print the summary (every input item: done, skipped with why, or failed); exit status 1 when
    nothing was written or an item failed."""
    rows, filters = log.finish(items, s)
    if filters:
        extra["filters removed"] = ", ".join(f"{r}: {n}" for r, n in sorted(filters.items()))
    print(f"{name} -> {a.output}" + "".join(f"\n{k}: {v}" for k, v in extra.items()) + f"\n{s}")
    return nothing_written(s) if not rows else 1 if s.failed else 0


@torch.no_grad()
def cmd_noise(a):
    """Greedy answers under DDPM-noised images. Each image's noise comes from its own generator, seeded from
    (--seed, item id), so a killed and resumed run writes what an uninterrupted one does."""
    from model.generate import row_seed
    from noise import NoiseSchedule, noise_image
    s = Summary()
    items = read_items(a.input, s, image_root=a.image_root)
    sched = NoiseSchedule(a.schedule, 1000, 1e-5, 5e-3)

    def noisy(img, it):  # noise drawn on the CPU: the same pairs on any device
        return noise_image(img, a.t, sched, torch.Generator().manual_seed(row_seed(a.seed, it["id"])))

    def work(a, model, tok, chunk, px):
        answers = generate_answers(model, tok, [it["prompt"] for it in chunk], px, a.template, a.max_new_tokens,
                                   cache_gb=a.kv_cache_gb)
        recs = []
        for it, ans in zip(chunk, answers):
            why = ("empty answer under the noisy image" if not ans.strip() else
                   "answer under the noisy image equals the ground truth" if ans.strip() == it["answer"].strip()
                   else None)
            rows = [] if why else [out_row(it, ans, "noise", "noise", a.output, t=a.t)]
            recs.append({"id": it["id"], "rows": rows, "skips": [[why, it["id"]]] if why else []})
        return recs

    log = run_items(a, "noise", items, work, transform=noisy)
    return finish(a, f"noise t={a.t}", items, s, log) if log else 0


# ------------------------------------------------------------------------------------------- clip-rank
@torch.no_grad()
def rank_batch(a, model, tok, chunk, px):
    """K sampled answers per image of one batch, CLIP-scored and filtered -> one ItemLog record per image. Answer k
    of an image samples with its own generator, seeded from (--seed, image id, k): the pairs do not depend on the
    batch, on how many processes share the work or on where a killed run stopped."""
    from model.generate import row_generators
    clip, ctok = a.clip_model
    gens = row_generators(a.seed, [f"{it['id']}#{k}" for it in chunk for k in range(a.samples)])
    answers = generate_answers(model, tok, [it["prompt"] for it in chunk], px, a.template, a.max_new_tokens,
                               a.temperature, a.top_p, gens, samples=a.samples, cache_gb=a.kv_cache_gb)
    # CLIP sees each image padded to square too: the whole image the answers describe, no edge cropped away
    _, cpx, _ = pixels_for(chunk, clip.config.vision.image_size, True)
    recs = []
    for i, it in enumerate(chunk):
        # scored image by image: a batch's padding would move the scores' last digits with the batch
        img = F.normalize(clip.encode_image(cpx[i:i + 1].to(a.device, clip.logit_scale.dtype)).float(), dim=-1)
        sl = slice(i * a.samples, (i + 1) * a.samples)
        scores = clip_scores(clip, ctok, img.expand(a.samples, -1), answers[sl], a.unit, a.pool)  # (K,)
        counts = Counter()
        pair = rank_pairs(answers[sl], scores.tolist(), a.min_score, a.min_margin, a.max_len_ratio, counts)
        rows = [] if pair is None else [out_row(it, pair[1], "clip-rank", "clip", a.output, chosen=pair[0],
                                                chosen_score=round(pair[2], 4), rejected_score=round(pair[3], 4))]
        recs.append({"id": it["id"], "rows": rows, "filters": dict(counts),
                     "skips": [["no pair passed the filters", it["id"]]] if pair is None else []})
    return recs


def cmd_clip_rank(a):
    """Batches of images, under torchrun split item by item over the ranks; each finished image is appended to
    OUTPUT.parts/ (ItemLog), so a rerun skips the images any rank finished, with any --batch-size or world size;
    at the end rank 0 writes OUTPUT in input order (atomically) and removes the parts."""
    from model import CLIPModel, Tokenizer
    s = Summary()
    items = read_items(a.input, s, need_answer=False, image_root=a.image_root)
    if a.limit:
        for it in items[a.limit:]:
            s.skip(f"beyond --limit {a.limit}", it["id"])
        items = items[:a.limit]

    def work(a, model, tok, chunk, px):
        if not hasattr(a, "clip_model"):  # loaded once, by the ranks that have work
            a.clip_model = (CLIPModel.from_pretrained(a.clip, dtype=getattr(torch, a.dtype), device=a.device).eval(),
                            Tokenizer.from_pretrained(a.clip))
        return rank_batch(a, model, tok, chunk, px)

    log = run_items(a, "clip-rank", items, work)
    return finish(a, "clip-rank", items, s, log) if log else 0


def check_args(a):
    """Values argparse's types let through, refused before any work: one line naming the flag."""
    checks = [(k, "must be at least 1", lambda v: v >= 1)
              for k in ("batch_size", "max_new_tokens", "workers", "max_attempts", "max_tokens")]
    checks += [("samples", "must be at least 2 (a pair needs two answers per image)", lambda v: v >= 2),
               ("limit", "must be 0 (every image) or a positive number of images", lambda v: v >= 0),
               ("t", "the noise step must be in [0, 1000)", lambda v: 0 <= v < 1000),
               ("kv_cache_gb", "must be positive", lambda v: v > 0)]
    for key, why, ok in checks:
        if hasattr(a, key) and not ok(getattr(a, key)):
            raise ValueError(f"--{key.replace('_', '-')} {getattr(a, key)}: {why}")


# ------------------------------------------------------------------------------------------- api
SYSTEM_PROMPT = (
    "You create realistic hallucinated answers about images for preference training of vision-language models. "
    "You get a question and its correct answer; rewrite the answer so it stays fluent and keeps the original's "
    "style, length and most of its wording, but contains the mistakes such a model plausibly makes. "
    'Reply with one JSON object and nothing else: {"hallucinated": "<the rewritten answer>", "edits": '
    '[{"category": "object" | "attribute" | "relation" | "count" | "reasoning", "original": "<span or empty>", '
    '"changed": "<new span>"}, ...]}')
TASKS = {
    "caption": "Make 1 to 3 changes, each of one of these kinds: (object) mention an object that often appears "
               "with the objects present but is not in the image; (attribute) change a colour, size, material, "
               "shape or state; (relation) change a spatial relation, an action, or a number of things.",
    "reasoning": "The answer reasons about the image. Corrupt 1 to 3 of the visual facts the reasoning relies on "
                 "(an absent object, a wrong attribute, a wrong relation or count) and let the reasoning and the "
                 "conclusion follow the wrong facts, so the answer stays coherent but is wrong.",
    "short": "The answer is short. Give a different, wrong answer of the same form (yes <-> no, another colour, "
             "another number, another object).",
}
CATEGORIES = ("object", "attribute", "relation", "count", "reasoning")


def answer_kind(prompt, answer):
    if len(answer.split()) <= 4:
        return "short"
    if re.search(r"\b(describe|description|caption|what do you see|what is (in|happening))\b", prompt, re.I):
        return "caption"
    return "reasoning" if len(split_sentences(answer)) > 1 else "caption"


def api_messages(item, vision, present=None):
    kind = answer_kind(item["prompt"], item["answer"])
    question = item["prompt"].replace("<image>", "").strip()
    text = f"{TASKS[kind]}\n\nQuestion: {question}\nCorrect answer: {item['answer']}"
    if present:
        text += ("\nObjects actually in the image: " + ", ".join(sorted(present)) +
                 ". Any object you add must not be one of them.")
    content = [{"type": "text", "text": text}]
    if vision:
        from chat_api import image_data_url
        content.append({"type": "image_url", "image_url": {"url": image_data_url(item["image"])}})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def parse_api_reply(text: str, original: str):
    """-> (hallucinated, category, edits) or ValueError with the reason (the client retries the request)."""
    t = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", t, re.S)
    t = fence.group(1) if fence else t
    try:
        obj = json.loads(t)
    except json.JSONDecodeError as e:
        raise ValueError(f"reply is not JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("reply is not a JSON object")
    hal = obj.get("hallucinated")
    if not isinstance(hal, str) or not hal.strip():
        raise ValueError("no non-empty 'hallucinated' string")
    if " ".join(hal.split()) == " ".join(original.split()):
        raise ValueError("'hallucinated' equals the original answer")
    n_o, n_h = len(original.split()), len(hal.split())
    if n_o >= 10 and not 0.5 <= n_h / n_o <= 2.0:
        raise ValueError(f"'hallucinated' has {n_h} words for an original of {n_o}")
    edits = obj.get("edits")
    if not isinstance(edits, list) or not edits or not all(isinstance(e, dict) for e in edits):
        raise ValueError("no 'edits' list of objects")
    cats = sorted({e.get("category") for e in edits})
    if not set(cats) <= set(CATEGORIES):
        raise ValueError(f"unknown edit categories {sorted(set(cats) - set(CATEGORIES), key=str)}")
    return hal.strip(), "+".join(cats), edits


def cmd_api(a):
    from chat_api import ChatClient, failed_path_for, run_jsonl_jobs
    s = Summary()
    vocab = Vocab(read_json(a.vocab) if a.vocab else None)
    items = read_items(a.input, s, all_turns=a.all_turns, image_root=a.image_root)
    ann = load_annotations(a.annotations, vocab) if a.annotations else None
    client = ChatClient(max_attempts=a.max_attempts, backoff_s=a.backoff)
    fmt = {"type": "json_object"} if a.json_mode else None

    def work(it):
        present = presence(it, vocab, ann)[0] if (ann is not None or it.get("objects")) else None
        reply = client.chat(api_messages(it, a.vision, present), model=a.model, temperature=a.temperature,
                            max_tokens=a.max_tokens, timeout=a.timeout, response_format=fmt,
                            validate=lambda text: parse_api_reply(text, it["answer"]) and None)
        hal, cat, edits = parse_api_reply(reply, it["answer"])
        return out_row(it, hal, "api", cat, a.output, edits=edits, model=a.model)

    job = run_jsonl_jobs(items, key_fn=lambda it: f"{it['id']}:api", work_fn=work, output_path=a.output,
                         workers=a.workers)
    for key, why in job.failed.items():  # grouped by the last attempt's reason; all of them are in .failed.jsonl
        last = re.sub(r"^.*?#\d+ ", "", why.rsplit(" | ", 1)[-1])[:120]
        s.skip(f"{last} (attempts in {os.path.basename(failed_path_for(a.output))})", key, failed=True)
    s.done = job.done
    print(f"api -> {a.output}: {job.skipped} already done before this run\n{s}")
    if job.failed:
        print("rerun the same command to retry the failed items (finished ones are not asked again)")
    return nothing_written(s) if not items else 1 if job.failed else 0


# ------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    subs = {}
    for name in ("api", "rules", "noise", "clip-rank"):
        q = subs[name] = sub.add_parser(name)
        q.add_argument("--input", required=True)
        q.add_argument("--output", required=True)
        q.add_argument("--image-root", default="", help="relative image paths are joined to it (default: the "
                       "input's directory)")
        q.add_argument("--recipe", default=None, help="a recipes/*.toml file (or FILE:SECTION) setting defaults")
        q.add_argument("--seed", type=int, default=0)
        if name in ("api", "rules"):
            q.add_argument("--annotations", default=None, help="exact objects per image id (else: from the text)")
            q.add_argument("--vocab", default=None, help="JSON word lists: objects, colors, sizes, relations, ...")
            q.add_argument("--all-turns", action="store_true", help="every (human, gpt) pair, not only the first")
        if name == "api":
            q.add_argument("--model", default="gpt-4o")
            q.add_argument("--workers", type=int, default=8)
            q.add_argument("--vision", action="store_true", help="send the image as a base64 data URL")
            q.add_argument("--json-mode", action="store_true", help='send response_format {"type": "json_object"}')
            q.add_argument("--temperature", type=float, default=0.7)
            q.add_argument("--max-tokens", type=int, default=1024)
            q.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
            q.add_argument("--max-attempts", type=int, default=5)
            q.add_argument("--backoff", type=float, default=1.0, help="base of the exponential backoff (s)")
        if name == "rules":
            q.add_argument("--mix", default=None, help="category weights, e.g. object=0.5,attribute=0.2,...")
        if name in ("noise", "clip-rank"):
            q.add_argument("--checkpoint", required=True)
            q.add_argument("--vision-tower", default=None, help="openai CLIP dir, for a liuhaotian checkpoint")
            q.add_argument("--tokenizer", default=None, help="tokenizer dir (default: the checkpoint)")
            q.add_argument("--template", default=DEFAULT_TEMPLATE, choices=sorted(TEMPLATES))
            q.add_argument("--image-aspect-ratio", default="", choices=["", "pad", "square"],
                           help="default: the checkpoint's config (pad for LLaVA-1.5)")
            q.add_argument("--max-new-tokens", type=int, default=128)
            q.add_argument("--device", default="auto", help="auto = cuda when there is a GPU, else cpu")
            q.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                           help="auto = bfloat16 on CUDA, float32 on the CPU")
            q.add_argument("--batch-size", type=int, default=16, help="images per generation batch")
            q.add_argument("--kv-cache-gb", type=float, default=20.0, help="bound on the generation KV cache (GiB): "
                           "a batch that would need more is generated in parts (the clip_rank recipe on a 7B: 17)")
        if name == "noise":
            q.add_argument("--t", type=int, default=500, help="noise step (POVID: 500 of 1000)")
            q.add_argument("--schedule", default="sigmoid", choices=["sigmoid", "linear", "cosine"])
        if name == "clip-rank":
            q.add_argument("--clip", required=True)
            q.add_argument("--samples", type=int, default=6)
            q.add_argument("--temperature", type=float, default=1.0)
            q.add_argument("--top-p", type=float, default=0.95)
            q.add_argument("--min-score", type=float, default=0.0, help="minimum CLIP score of the chosen answer")
            q.add_argument("--min-margin", type=float, default=2.0, help="minimum chosen - rejected CLIP score")
            q.add_argument("--max-len-ratio", type=float, default=1.5, help="longer / shorter answer, in words")
            q.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
            q.add_argument("--unit", default="sentence", choices=["sentence", "phrase"],
                           help="what CLIP scores: each sentence (CSR) or each comma/'and' phrase")
            q.add_argument("--pool", default="mean", choices=["mean", "min"], help="how unit scores combine")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in subs and "--recipe" in " ".join(argv):  # the recipe's values become the defaults
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--recipe")
        from recipes import apply_to_parser
        apply_to_parser(subs[argv[0]], pre.parse_known_args(argv[1:])[0].recipe)
    a = p.parse_args(argv)
    check_args(a)
    return {"api": cmd_api, "rules": cmd_rules, "noise": cmd_noise, "clip-rank": cmd_clip_rank}[a.cmd](a)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        sys.exit(main(sys.argv[1:]))
    except (ValueError, FileNotFoundError) as e:  # bad input files: one clear line, no traceback
        sys.exit(f"hallucinate.py: error: {e}")
