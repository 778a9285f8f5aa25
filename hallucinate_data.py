"""What hallucinate.py reads and writes: its prompt pools and its preference rows (a helper of hallucinate.py).

Read: LLaVA conversation JSON (e.g. LLaVA-1.5's instruction mix `llava_v1_5_mix665k.json`; records without an image
are counted as "no image"), COCO's `captions_*.json` (one record per image, CLIP-DPO's caption prompts in turn) or
JSON / JSONL of {id, image, prompt|question, answer?}. Relative image paths are joined to an image root. Every bad
record is counted in a Summary with its place (file:line or item), never silently dropped.
Written: preference JSONL rows {id, image (relative to the output), prompt, chosen, rejected, strategy, category},
atomically. The long jobs (noise, clip-rank) keep per-item progress in OUTPUT.parts/ (ItemLog) until they finish.

    items = read_items(path, Summary(), need_answer=False, image_root=COCO + "/train2014")
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter

from model.files import read_json, write_json, write_jsonl


class Summary:
    """Counts by reason, with the first few places (file:line, image path, item id) of each."""

    def __init__(self):
        self.done, self.skipped, self.failed, self.where = 0, Counter(), Counter(), {}

    def skip(self, reason, where, failed=False):
        (self.failed if failed else self.skipped)[reason] += 1
        self.where.setdefault(reason, []).append(str(where))

    def bad(self, reason, where, detail=""):
        """A malformed input line (train_data.read_records' callback): counted, never fatal here."""
        self.skip(f"{reason} ({detail})" if detail else reason, where)

    def __str__(self):
        s = [f"done {self.done}, skipped {sum(self.skipped.values())}, failed {sum(self.failed.values())}"]
        for kind, c in (("skipped", self.skipped), ("failed", self.failed)):
            for r, n in c.most_common():
                w = self.where[r]
                s.append(f"  {kind} {n} x {r}: {', '.join(w[:5])}" + (f" (+{len(w) - 5} more)" if len(w) > 5 else ""))
        return "\n".join(s)


# CLIP-DPO asks the model for captions with 5 prompts (Ouali et al. 2024, sec. 3.1); the paper's wording is not
# public, so these are ours. A COCO captions file gets one per image, in turn.
CAPTION_PROMPTS = ("Describe this image.", "Describe this image in detail.", "What is in this photo?",
                   "Write a caption for this image.", "Give a short description of what the image shows.")


def coco_caption_records(path: str, data: dict, prompts):
    """COCO's captions_*.json ({"images": [{"id", "file_name", ...}], "annotations": [{"image_id", "caption"}]}) ->
    one record per image: its file, a caption prompt (round robin over `prompts`), its first human caption."""
    caps = {}
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or "image_id" not in a or not isinstance(a.get("caption"), str):
            raise ValueError(f"{path}: annotations[{k}]: needs 'image_id' and a 'caption' string")
        caps.setdefault(a["image_id"], a["caption"].strip())
    out = []
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise ValueError(f"{path}: images[{k}]: needs 'id' and a 'file_name' string")
        out.append((f"{path}: images[{k}]", {"id": str(im["id"]), "image": im["file_name"],
                                             "prompt": prompts[k % len(prompts)], "answer": caps.get(im["id"])}))
    return out


def _records(path: str, text: str, summary: Summary, prompts):
    """[(where, record)] of a COCO captions file, else of a JSON list or JSONL (train_data.read_records: a bad JSONL
    line is counted in `summary`, a bad JSON list is an error naming its line)."""
    if text.lstrip()[:1] == "{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSONL: several objects
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            return coco_caption_records(path, data, prompts)
    from train_data import read_records
    return read_records(path, summary)


def read_items(path: str, summary: Summary, need_answer: bool = True, all_turns: bool = False,
               image_root: str = "", prompts=CAPTION_PROMPTS):
    """-> [{id, image (absolute), prompt, answer, objects}] from LLaVA conversation JSON (e.g. LLaVA-1.5's
    instruction mix; records without an image are counted as such), COCO captions (the prompts above) or JSONL of
    {id, image, prompt|question, answer?}. Relative image paths are joined to image_root (default: the input's
    directory). Bad records and missing images are counted in `summary` and left out."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file {path!r} does not exist")
    root = image_root or os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        raw = _records(path, f.read(), summary, prompts)
    if not raw:
        raise ValueError(f"input file {path}: it holds no records (empty)")
    items, seen = [], set()
    for where, r in raw:
        try:
            if not isinstance(r, dict):
                raise TypeError("not a JSON object")
            rid = str(r.get("id", r.get("question_id", where)))
            if "conversations" in r:
                conv = r["conversations"]
                pairs = [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv) - 1, 2)
                         if conv[i]["from"] == "human" and conv[i + 1]["from"] == "gpt"]
                if not pairs:
                    raise KeyError("a human turn followed by a gpt turn")
            else:
                pairs = [(r.get("prompt", r.get("question")), r.get("answer", r.get("chosen")))]
            if "image" not in r:  # a text-only record (LLaVA's mix has 40K): nothing to hallucinate about
                summary.skip("no image", where)
                continue
            image = r["image"]
            if not isinstance(image, str):
                raise TypeError("image is not a path")
        except (KeyError, IndexError, TypeError) as e:
            summary.skip(f"malformed record ({type(e).__name__}: {e})", where)
            continue
        image = image if os.path.isabs(image) else os.path.join(root, image)
        if not os.path.isfile(image):
            summary.skip("missing image", f"{where} (id {rid!r}): {image}")  # the input's line or item, then the file
            continue
        for k, (prompt, answer) in enumerate(pairs if all_turns else pairs[:1]):
            iid = rid if k == 0 else f"{rid}#{k}"
            if not isinstance(prompt, str) or (need_answer and not (isinstance(answer, str) and answer.strip())):
                summary.skip("malformed record (no prompt or answer)", where)
            elif iid in seen:
                summary.skip("duplicate id", f"{where} ({iid})")
            else:
                seen.add(iid)
                items.append({"id": iid, "image": image, "prompt": prompt, "answer": answer,
                              "objects": r.get("objects"), "where": where})
    return items


def out_row(item, rejected, strategy, category, output, chosen=None, **extra):
    rel = os.path.relpath(item["image"], os.path.dirname(os.path.abspath(output)))
    return {"id": f"{item['id']}:{strategy}", "image": rel, "prompt": item["prompt"],
            "chosen": item["answer"] if chosen is None else chosen, "rejected": rejected, "strategy": strategy,
            "category": category, **extra}


class ItemLog:
    """Per-item progress of a long job (noise, clip-rank), so a killed run resumes by item: each finished item is
    one JSON line {id, rows, skips: [[reason, where]], filters} appended to OUTPUT.parts/rank{r}.jsonl (one write,
    so a kill loses at most the batch in flight). `read()` gathers every rank's file (the world size, the batch
    size may differ between runs); `finish()` writes OUTPUT in input order, atomically, and removes the parts."""

    def __init__(self, output: str, rank: int = 0):
        self.output, self.dir = output, output + ".parts"
        self.path = os.path.join(self.dir, f"rank{rank}.jsonl")

    def read(self) -> dict:
        from chat_api import resume_jsonl
        done = {}
        if os.path.isdir(self.dir):
            for name in sorted(os.listdir(self.dir)):
                if name.endswith(".jsonl"):
                    done.update({r["id"]: r for r in resume_jsonl(os.path.join(self.dir, name), "id")})
        return done

    def check_settings(self, settings: dict, done: dict) -> None:
        """The finished items `done` must come from this run's settings (hallucinate.run_settings: the command,
        checkpoint fingerprints, decoding and noise values); resuming with others would mix two runs in one file.
        With nothing done yet there is nothing to mix: a run that failed before its first item (a truncated
        download, say) may be rerun with anything."""
        path = os.path.join(self.dir, "settings.json")
        if not done:
            return
        if not os.path.isfile(path):
            raise SystemExit(f"{self.dir} holds work that records no settings (an older version wrote it): finish "
                             f"it with that version, or delete {self.dir} to start over")
        old = read_json(path)
        diff = [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
                if old.get(k) != settings.get(k)]
        if diff:
            raise SystemExit(f"{self.dir} holds the work of another run ({'; '.join(diff)}); rerun with its "
                             f"settings, or give another --output (or delete {self.dir} to start over)")

    def write_settings(self, settings: dict, done: dict) -> None:
        """Record the settings when this run starts the work (nothing done yet; call before any item is added)."""
        if not done:
            os.makedirs(self.dir, exist_ok=True)
            write_json(os.path.join(self.dir, "settings.json"), settings)

    def appender(self):
        from chat_api import JsonlAppender
        os.makedirs(self.dir, exist_ok=True)
        return JsonlAppender(self.path)

    def finish(self, items, summary: Summary) -> tuple[list, Counter]:
        """Every item counted in `summary` (done = rows written, skipped with its reasons, failed when no rank
        recorded it); OUTPUT written in input order. -> (rows, filter counts)."""
        done, rows, filters = self.read(), [], Counter()
        for it in items:
            rec = done.get(it["id"])
            if rec is None:
                summary.skip("not processed (rerun the same command)", it["id"], failed=True)
                continue
            rows += rec["rows"]
            summary.done += len(rec["rows"])
            filters.update(rec.get("filters", {}))
            for reason, where in rec["skips"]:
                summary.skip(reason, where)
        write_jsonl(self.output, rows)
        if not summary.failed:
            shutil.rmtree(self.dir, ignore_errors=True)
        return rows, filters
