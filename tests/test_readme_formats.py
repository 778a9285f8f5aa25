"""The README's example records (its <!-- formats --> block), one per input a user writes by hand, read by the
project's own readers with LLaMA's real tokenizer: a POVID item (train.py), a TRL pair (train.py), a question line
(eval.py generate) and a `hallucinate.py noise` input with its required answer. An example the readers reject, or
read as another schema, fails here."""
import json
import os

from PIL import Image

import train_data as D
from evals.files import question_records
from hallucinate_data import Summary, read_items
from model import Tokenizer
from rehearsal.run import ROOT, readme_block

LLAMA = os.path.join(ROOT, ".venv", "assets", "llama")


def examples() -> dict:
    out = {}
    for line in readme_block("formats", "text").strip().splitlines():
        name, rec = line.split("{", 1)
        out[name.split("(")[0].strip()] = json.loads("{" + rec)
    return out


def test_every_example_record_reads_as_its_format(tmp_path):
    ex = examples()
    assert set(ex) == {"POVID item", "TRL pair", "question", "noise input"}
    (tmp_path / "images").mkdir()
    for name in ("images/1.jpg", "COCO_train2014_000000000009.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    tok = Tokenizer.from_pretrained(LLAMA)

    (tmp_path / "povid.json").write_text(json.dumps([ex["POVID item"]]))
    (tmp_path / "pairs.jsonl").write_text(json.dumps(ex["TRL pair"]) + "\n")
    for f in ("povid.json", "pairs.jsonl"):
        skips = D.Skips("error")
        rows = D.load_pairs(str(tmp_path / f), tok, 4, "vicuna_v1", 512, skips)
        assert len(rows) == 1 and skips.report().strip() == "nothing skipped or truncated", f
        r = rows[0]
        assert r["chosen_ids"] != r["rejected_ids"] and r["chosen_ids"].count(tok.image_token_id) == 4, f

    (tmp_path / "q.jsonl").write_text(json.dumps(ex["question"]) + "\n")
    q = question_records(str(tmp_path / "q.jsonl"))
    assert [x["question_id"] for x in q] == ["q1"] and os.path.isfile(q[0]["image_file"])

    (tmp_path / "noise.jsonl").write_text(json.dumps(ex["noise input"]) + "\n")
    summary = Summary()
    items = read_items(str(tmp_path / "noise.jsonl"), summary)
    assert len(items) == 1 and items[0]["answer"] == "A dog on a couch." and os.path.isfile(items[0]["image"])
