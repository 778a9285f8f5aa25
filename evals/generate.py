"""`eval.py generate`: answer a question file with a checkpoint, one JSON line per question, resumable.

    python eval.py generate --checkpoint CKPT --questions Q --output RUN/answers.jsonl [--image-root DIR]
                            [--recipe recipes/eval.toml:chair|pope|mmhal] [--vision-tower CLIP_DIR] [--shard I/N]

Question files: every layout evals/files.py reads (ours, POPE's, LLaVA's), MMHal-Bench's template
(evals/mmhal.py), AMBER's query files (evals/amber.py), and the benchmark files whose module builds the published
prompts: LLaVA's ScienceQA llava_test_CQM-A.json (evals/sqa.py), LLaVA's llava_mme.jsonl or MME's folder
(evals/mme.py), RLAIF-V's Object HalBench file with its images inline (evals/objhal.py). Each answer line holds the question's fields, "prompt"
(what the model was asked), "text" (the answer), "model" and "gen" (template, decoding, suffix, image aspect ratio,
recipe): scoring copies the distinct "gen" values into the metrics JSON as "protocol", since numbers are only
comparable under the same protocol.
Defaults: model.tokenizer.DEFAULT_TEMPLATE (vicuna_v1, LLaVA-1.5's training and benchmark template), CUDA + bfloat16
with a GPU (else CPU + float32), pad-to-square when the checkpoint's config says image_aspect_ratio = "pad"
(--image-aspect-ratio overrides), 128 new tokens; on MMHal-Bench's template, LLaVA-RLHF's protocol: pad-to-square and
up to 1024 new tokens. The model code (torch) is imported only once there is something to answer.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import io
import os
import sys
import time

import evals
from chat_api import JsonlAppender, resume_jsonl
from evals.files import check_images, first_char, question_records, write_json
from evals.mmhal import fill_template, read_template


def read_questions(a) -> list[dict]:
    """The question file as a work list: the first benchmark module whose is_question_file(path) takes it reads it
    (its GENERATE_DEFAULTS fill the settings left unset), else a JSONL question file of evals/files.py."""
    for name in evals.BENCHMARKS:
        m = importlib.import_module(f"evals.{name}")
        if not getattr(m, "is_question_file", lambda _: False)(a.questions):
            continue
        for key, value in getattr(m, "GENERATE_DEFAULTS", {}).items():
            if getattr(a, key) is None:
                setattr(a, key, value)
        if a.short_answer_suffix is None:
            return m.question_records(a.questions, a.image_root)
        if "short_answer_suffix" not in inspect.signature(m.question_records).parameters:
            raise SystemExit(f"--short-answer-suffix: {a.questions} is a {name} question file, whose prompts are "
                             f"the published ones; leave the flag out")
        return m.question_records(a.questions, a.image_root, short_answer_suffix=a.short_answer_suffix)
    if first_char(a.questions) == "[":
        raise ValueError(f"{a.questions}: a JSON list that no benchmark reads (the JSON lists generate answers: "
                         f"MMHal-Bench's response_template.json, AMBER's query_*.json, LLaVA's ScienceQA file)")
    return question_records(a.questions, a.image_root, a.short_answer_suffix)


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def check_settings(a) -> None:
    """Flags that would crash mid-run or write answers that are not answers: refused before any work."""
    if a.batch_size < 1:
        raise SystemExit(f"generate: --batch-size must be at least 1, got {a.batch_size}")
    if a.max_new_tokens is not None and a.max_new_tokens < 1:
        raise SystemExit(f"generate: --max-new-tokens must be at least 1, got {a.max_new_tokens} (empty answers "
                         f"would be written and then kept by every resume)")
    if a.temperature < 0 or not 0 < a.top_p <= 1:
        raise SystemExit(f"generate: --temperature must be >= 0 and --top-p in (0, 1], got {a.temperature} and "
                         f"{a.top_p}")


def run_settings(a) -> dict:
    """What this run's answers are made with, read without loading the weights: device, the checkpoint and its
    fingerprint (model.files.fingerprint: names, sizes, first and last MiB of its files) and "gen", the decoding
    settings every answer line records (numbers are only comparable under the same protocol). A sampled answer's
    random numbers come from (seed, question id) alone, so the batch size and a resume do not change it."""
    import torch
    from model.files import fingerprint, read_json
    from model.tokenizer import DEFAULT_TEMPLATE

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = a.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    config = os.path.join(a.checkpoint, "config.json")
    if not os.path.isfile(config):
        raise SystemExit(f"generate: --checkpoint {a.checkpoint}: no config.json there")
    pad = read_json(config).get("image_aspect_ratio", "pad") == "pad"
    gen = {"template": a.template or DEFAULT_TEMPLATE, "temperature": a.temperature, "top_p": a.top_p,
           "max_new_tokens": a.max_new_tokens, "seed": a.seed, "dtype": dtype,
           "image_aspect_ratio": a.image_aspect_ratio or ("pad" if pad else "square"),
           "sampling": "per-item seeds (model.generate.row_generators)"}
    if a.recipe:
        gen["recipe"] = a.recipe
    return {"device": device, "model": a.checkpoint, "model_fingerprint": fingerprint(a.checkpoint), "gen": gen}


def check_resume(path: str, done: list[dict], run: dict) -> None:
    """Answers already in --output must come from the same checkpoint (the same files: compared by fingerprint, so
    a copy or another path to it is the same, and retrained weights at the old path are not) and the same
    generation settings as this run (the suffix may differ between questions, the recipe's name is only a note);
    anything else would mix two runs. Lines written before fingerprints were recorded compare the real path."""
    def key(g):
        return {k: v for k, v in g.items() if k not in ("suffix", "recipe")} if isinstance(g, dict) else g
    settings = run["gen"]
    for r in done:
        if "model_fingerprint" in r:
            same_model = r["model_fingerprint"] == run["model_fingerprint"]
        else:
            same_model = os.path.realpath(str(r.get("model"))) == os.path.realpath(run["model"])
        if not same_model or key(r.get("gen")) != key(settings):
            old = key(r.get("gen")) if isinstance(r.get("gen"), dict) else {}
            diff = [k for k in sorted(set(old) | set(key(settings))) if old.get(k) != settings.get(k)]
            what = ([f"model: {r.get('model')!r} (fingerprint {r.get('model_fingerprint')}) -> {run['model']!r} "
                     f"(fingerprint {run['model_fingerprint']})"] if not same_model else []) + \
                [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff]
            raise SystemExit(f"generate: {path} holds answers of another run (question {r.get('question_id')!r}; "
                             f"{'; '.join(what)}); give another --output, or delete it to start over")


def cmd_generate(a) -> None:
    check_settings(a)
    qs = read_questions(a)
    if not qs:
        raise SystemExit(f"generate: {a.questions} holds no questions")
    a.max_new_tokens = 128 if a.max_new_tokens is None else a.max_new_tokens  # LLaVA's model_vqa default
    check_settings(a)  # again: a benchmark's defaults are in now
    if a.shard:  # every N-th question from the I-th: one process per GPU, answers concatenated afterwards
        i, n = (int(x) for x in a.shard.split("/"))
        if not 0 <= i < n:
            raise ValueError(f"--shard {a.shard}: expected I/N with 0 <= I < N")
        qs = qs[i::n]
    previous = resume_jsonl(a.output, "question_id")
    run = run_settings(a)
    check_resume(a.output, previous, run)  # before anything counts as done: a finished file of another run too
    if previous:  # the same files, maybe under another path: the lines keep one "model", so they score as one run
        run["model"] = previous[0].get("model", run["model"])
    done = {str(r["question_id"]) for r in previous}
    todo = [q for q in qs if str(q["question_id"]) not in done]
    print(f"generate: {len(qs)} questions, {len(qs) - len(todo)} already answered in {a.output}, "
          f"{len(todo)} to go", file=sys.stderr)
    if todo:
        check_images(todo, "" if a.image_root else "; pass --image-root, the folder the file names are in")
        _generate(a, todo, run)
    if a.filled_template:
        answers = {str(r["question_id"]): r["text"] for r in resume_jsonl(a.output, "question_id")}
        write_json(a.filled_template, fill_template(read_template(a.questions), answers))
        print(f"generate: the template with model_answer filled in -> {a.filled_template}", file=sys.stderr)


def _generate(a, todo: list[dict], run: dict) -> None:
    import torch
    from model import Llava, Tokenizer, load_image
    from model.generate import row_generators
    from model.tokenizer import pad_sequences

    device, settings = run["device"], run["gen"]
    dtype_name, template, aspect = settings["dtype"], settings["template"], settings["image_aspect_ratio"]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    model = Llava.from_pretrained(a.checkpoint, dtype=dtype, device=device, vision_tower=a.vision_tower).eval()
    cfg = model.config
    # a liuhaotian tokenizer has no "<image>" token: its model takes the id from the config (vocab size)
    tok = Tokenizer.from_pretrained(a.tokenizer or a.checkpoint,
                                    image_token_id=cfg.image_token_id if a.vision_tower else None)
    pad = tok.pad_id if tok.pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None
                                                     else tok.eos_id)
    print(f"generate: {a.checkpoint} on {device} ({dtype_name}), template {template}, images {aspect}",
          file=sys.stderr)
    start, last, n = time.time(), 0.0, 0
    with JsonlAppender(a.output) as out:
        for b in range(0, len(todo), a.batch_size):
            batch = todo[b:b + a.batch_size]
            prompts = [tok.encode_prompt(q["prompt"], cfg.num_image_tokens, template=template) for q in batch]
            input_ids, mask = pad_sequences(prompts, pad, side="left")  # (B, T) each, left-padded
            px = torch.stack([load_image(_image(q), cfg.image_size, pad=aspect == "pad")  # (B, 3, S, S)
                              for q in batch])
            new = model.generate(input_ids.to(device), px.to(device, dtype), mask.to(device),
                                 max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                                 eos_token_id=tok.eos_id, pad_token_id=pad, vocab_size=tok.vocab_size,
                                 generator=row_generators(a.seed, [q["question_id"] for q in batch], device))  # (B, N)
            for q, row in zip(batch, new.tolist()):
                if tok.eos_id in row:
                    row = row[:row.index(tok.eos_id)]
                out.write({**q["answer_base"], "text": tok.decode(row, skip_special_tokens=True).strip(),
                           "model": run["model"], "model_fingerprint": run["model_fingerprint"],
                           "gen": {**settings, "suffix": q["suffix"]}})
            n += len(batch)
            if time.time() - last > 10 or n == len(todo):
                last, el = time.time(), time.time() - start
                print(f"generate: {n}/{len(todo)} ({100 * n / len(todo):.0f}%), {n / el:.2f} answers/s, "
                      f"elapsed {_fmt_s(el)}, ETA {_fmt_s(el / n * (len(todo) - n))}", file=sys.stderr)


def _image(q: dict):
    """A question's image: its file, or the picture itself where the question file holds it (Object HalBench)."""
    if q.get("image_bytes") is None:
        return q["image_file"]
    from PIL import Image
    return Image.open(io.BytesIO(q["image_bytes"]))


def add_arguments(g: argparse.ArgumentParser) -> None:
    g.add_argument("--checkpoint", required=True)
    g.add_argument("--questions", required=True, help="our JSONL, POPE's / LLaVA's JSONL, MMHal's template, "
                   "ScienceQA's llava_test_CQM-A.json, MME's llava_mme.jsonl or folder, Object HalBench's JSONL")
    g.add_argument("--output", required=True)
    g.add_argument("--image-root", default=None, help="folder of the images (default: the question file's)")
    g.add_argument("--vision-tower", default=None, help="openai CLIP dir, for a liuhaotian LLaVA-1.5 checkpoint")
    g.add_argument("--tokenizer", default=None, help="dir with tokenizer.json (default: the checkpoint)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=None, help="default: 1024 for MMHal's template, else 128")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--template", default=None, help="vicuna_v1 | llava_hf (default: the project's default)")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    g.add_argument("--image-aspect-ratio", default=None, choices=["pad", "square"],
                   help="pad = LLaVA-1.5's expand-to-square; default: pad for MMHal's template, else the "
                        "checkpoint config's image_aspect_ratio")
    g.add_argument("--short-answer-suffix", default=None, action=argparse.BooleanOptionalAction,
                   help="append LLaVA's '\\nAnswer the question using a single word or phrase.' "
                        "(default: to POPE-style lines only)")
    g.add_argument("--shard", default=None, help="I/N: answer questions I, I+N, I+2N, ... (one process per GPU)")
    g.add_argument("--filled-template", default=None,
                   help="MMHal: write the template with model_answer filled in here, once all are answered")


COMMANDS = {"generate": ("answer a question file (resumable)", add_arguments, cmd_generate)}
