"""The README's real recipe, run as written (rehearsal/run.py) at narrow widths: llava-1.5-7b-hf's config with 2
layers and narrow widths (576 image tokens, 336 px, vocab 32064, the real LLaMA tokenizer), a narrow CLIP of
ViT-L/14-336 shape with CLIP's real BPE vocabulary, tiny data in every public schema; torchrun with 2 processes (DDP),
then POVID's two stages again under FSDP2; AMBER, Object HalBench, ScienceQA and MME on a handful of questions each
(tiny_bench). `make rehearsal` runs the same at real widths, on every fixture question."""
import json
import math
import os

import pytest

from rehearsal.run import commands, readme_block, rehearse
from test_eval_official import check_new_benchmarks


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("rehearsal")
    return out, rehearse(str(out), narrow=True, steps=1, ngpu=2, chair_images=3, fsdp_pass=True, models=("povid",),
                         fsdp_match=r"povid_stage", tiny_bench=True)


def test_the_readme_recipe_runs_end_to_end(rehearsal):
    out, rep = rehearsal
    ran = [r for rs in rep["commands"].values() for r in rs]
    assert ran and all(r["rc"] == 0 for r in ran)
    assert len(rep["commands"]["train"]) == len(commands(readme_block("real-run", "bash"))[1])
    assert len(rep["commands"]["fsdp"]) == 2
    for run_dir in ("ddp/povid_stage1", "ddp/povid", "ddp/clip_dpo", "fsdp/povid_stage1", "fsdp/povid"):
        log = [json.loads(x) for x in (out / run_dir / "metrics.jsonl").read_text().splitlines()]
        assert log[0]["step"] == 1 and log[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference
        cfg = json.loads((out / run_dir / "config.json").read_text())
        assert (cfg["lora_rank"], cfg["template"], cfg["image_aspect_ratio"], cfg["batch_size"]) == \
            (128, "vicuna_v1", "pad", 2)  # the recipe's values; batch 0 = 1 pair x 2 ranks


def test_the_exports_are_what_the_ecosystem_loads(rehearsal):
    out, _ = rehearsal
    model = out / "ddp" / "povid" / "model"
    assert json.loads((model / "config.json").read_text())["torch_dtype"] == "float16"  # the base's dtype
    pre = json.loads((model / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "LlavaImageProcessor" and pre["do_pad"] is True
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.json",
                 "generation_config.json"):
        assert (model / name).is_file(), name
    assert len(json.loads((out / "ddp" / "pairs" / "clip_rank.jsonl").read_text().splitlines()[0])) > 0


def test_the_evaluations_on_the_official_files(rehearsal):
    out, rep = rehearsal
    run = out / "ddp" / "eval" / "povid"
    chair = json.loads((run / "chair.json").read_text())
    assert chair["metrics"]["n_captions"] == 3
    for s in ("random", "popular", "adversarial"):
        pope = json.loads((run / f"pope_{s}.json").read_text())
        assert pope["split"] == s and pope["metrics"]["n"] > 0 and pope["parser"].startswith("official")
    mm = json.loads((run / "mmhal.json").read_text())
    assert mm["metrics"]["n"] == 8 and mm["metrics"]["complete"]
    dirs = {k: rep["variables"][k][1] for k in ("AMBER", "OBJHAL", "SQA", "MME")}  # the README's VARs, pointed here
    check_new_benchmarks(run, dirs, new_tokens=8)
    amber = json.loads((run / "amber.json").read_text())["metrics"]
    assert (amber["n"], amber["n_generative"]) == (5, 2)  # tiny_bench: AMBER_1, AMBER_2 and three yes/no questions
