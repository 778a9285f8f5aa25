"""The toy-world pipeline end to end in quick mode: every stage runs through the real entry points and the report
has the issue's keys. It asserts that the pipeline works, not the hallucination targets (those need the full run)."""
import json
import os
import sys

import pytest

from toy import demo, pairs
from toy import report as demo_report


def test_quick_pipeline_end_to_end(tmp_path, monkeypatch):
    out = tmp_path / "toy"
    monkeypatch.setattr(sys, "argv", ["demo.py", "--quick", "--out", str(out)])
    demo.main()
    rep = json.loads((out / "report.json").read_text())
    for run in ("baseline", "povid_stage1", "povid", "noise_only", "nll_only", "clip_dpo", "povid_t0"):
        for key in ("chair_s", "chair_i", "recall", "pope_f1", "pope_yes_ratio"):
            assert 0.0 <= rep[run][key] <= 1.0, (run, key)
    assert rep["n_test_images"] == demo.QUICK["n_test"] and rep["wall_s"] > 0 and rep["stages_reused"] == []
    for run in ("baseline", "povid"):  # the mechanism table: companions named when absent / present
        assert set(rep[run]["companions_named"]) <= {"absent", "clear", "faint", "covered"}
        assert "absent" in rep[run]["companions_named"]
        roles = rep[run]["recall_by_role"]  # and recall by role: anchors are in every scene
        assert {"anchor", "companion"} <= set(roles) <= \
            {"anchor", "companion", "extra", "hallucinations_absent_companion"}
        assert all(0.0 <= v <= 1.0 for v in roles.values())
    for run in ("povid", "clip_dpo"):  # every change against the baseline comes with its bootstrap interval
        vs = rep[run]["vs_baseline"]
        assert set(vs) == {"chair_i_rel", "chair_s", "recall", "pope_f1"}
        assert all(v["ci95"][0] <= v["ci95"][1] for v in vs.values())
        assert vs["recall"]["change"] == pytest.approx(rep[run]["recall"] - rep["baseline"]["recall"])
    assert "vs_baseline" not in rep["baseline"] and "paired-bootstrap intervals" in (out / "report.md").read_text()
    assert os.path.getsize(out / "examples.png") > 1000 and "| povid |" in (out / "report.md").read_text()
    # a re-run reuses every stage (nothing is trained again)
    log_size = os.path.getsize(out / "pipeline.log")
    demo.main()
    with open(out / "pipeline.log") as f:
        f.seek(log_size)
        assert "train.py" not in f.read()
    again = json.loads((out / "report.json").read_text())
    assert again["stages_reused"] and "stages reused from an earlier run" in (out / "report.md").read_text()
    assert {k: again[k] for k in rep if k not in ("wall_s", "stages_reused")} == \
        {k: rep[k] for k in rep if k not in ("wall_s", "stages_reused")}
    # the validation split: the same trained models, evaluated on other held-out scenes into their own files
    monkeypatch.setattr(sys, "argv", ["demo.py", "--quick", "--out", str(out), "--eval-split", "val"])
    demo.main()
    val = json.loads((out / "report_val.json").read_text())
    assert val["split"] == "val" and val["n_val_images"] == demo.QUICK["n_val"] and rep["split"] == "test"
    assert set(val["stages_reused"]) >= {"world", "sft", "povid", "clip_dpo"} and "questions_val" not in val[
        "stages_reused"]
    assert set(val) - {"n_val_images"} == set(rep) - {"n_test_images"}
    answered = {json.loads(x)["image_id"] for x in (out / "runs_val/povid/chair_answers.jsonl").open()}
    assert answered == set(json.loads((out / "world/splits.json").read_text())["val"])
    assert "validation scenes" in (out / "report_val.md").read_text() and (out / "examples_val.png").exists()
    assert json.loads((out / "report.json").read_text()) == again  # the test report is left alone
    assert rep["seed"] == 0
    # another seed's models must not be mixed with these: reusing the directory is refused, naming the marker
    monkeypatch.setattr(sys, "argv", ["demo.py", "--quick", "--out", str(out), "--seed", "1"])
    with pytest.raises(SystemExit, match="train_config.json.*--seed 0"):
        demo.main()


def test_recall_by_role_and_companion_mentions(tmp_path):
    """The report's mechanism tables on two hand-made captions: a table scene with plate, fork (faint) and a ball
    (an extra), captioned "plate, fork, cup" (cup: an absent companion); a street scene with car and dog, captioned
    "car, bench" (bench: not a street companion)."""
    from types import SimpleNamespace
    inst = lambda c, faint=False: {"category": c, "faint": faint, "occluded": False}  # noqa: E731
    anns = {"a": {"scene": "table", "objects": ["plate", "fork", "ball"],
                  "instances": [inst("plate"), inst("fork", True), inst("ball")]},
            "b": {"scene": "street", "objects": ["car", "dog"], "instances": [inst("car"), inst("dog")]}}
    (tmp_path / "test_annotations.json").write_text(json.dumps(anns))
    (tmp_path / "vocab.json").write_text(json.dumps({"cooccurrence": {
        "table": ["plate", "fork", "cup", "bottle"], "street": ["car", "traffic light", "person", "dog"]}}))
    (tmp_path / "chair.json").write_text(json.dumps({"per_caption": {
        "a": {"mentioned": ["plate", "fork", "cup"], "hallucinated": ["cup"]},
        "b": {"mentioned": ["car", "bench"], "hallucinated": ["bench"]}}}))
    pl = SimpleNamespace(world=str(tmp_path), split="test")
    assert demo_report.recall_by_role(pl, str(tmp_path)) == {"anchor": 1.0, "companion": 0.5, "extra": 0.0,
                                                      "hallucinations_absent_companion": 0.5}
    # absent companions: cup, bottle (table), traffic light, person (street); only cup named
    assert demo_report.companion_mentions(pl, str(tmp_path)) == {"absent": 0.25, "clear": 0.0, "faint": 1.0}


def test_clip_dpo_data_adds_one_qa_pair_per_ranked_image(tmp_path):
    """CLIP-DPO's training file: every ranked caption pair, then the first QA pair of each ranked image (none of an
    image the ranking left out, none of its caption pair)."""
    pl = demo.Pipeline(str(tmp_path), quick=True)
    (tmp_path / "pairs").mkdir()
    pair = lambda i, img, prompt, c, r: {"id": i, "image": img, "prompt": prompt, "chosen": c, "rejected": r}  # noqa
    ranked = [pair("a:clip-rank", "../w/a.png", "<image>\nDescribe this image.", "a cup .", "a cup and a fork ."),
              pair("b:clip-rank", "../w/b.png", "<image>\nDescribe this image.", "a car .", "a car and a dog .")]
    rules = [pair("a:rules", "../w/a.png", "<image>\nDescribe this image.", "a cup .", "a cup and a fork ."),
             pair("a#1:rules", "../w/a.png", "Is there a fork in the image?", "No.", "Yes."),
             pair("a#2:rules", "../w/a.png", "What color is the cup?", "red.", "blue."),
             pair("b#1:rules", "../w/b.png", "Is there a car in the image?", "Yes.", "No."),
             pair("c#1:rules", "../w/c.png", "Is there a dog in the image?", "No.", "Yes.")]
    for name, rows in (("ranked.jsonl", ranked), ("rules.jsonl", rules)):
        (tmp_path / "pairs" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = pairs.clip_dpo_data(pl, str(tmp_path / "pairs/ranked.jsonl"), str(tmp_path / "pairs/rules.jsonl"))
    got = [json.loads(x) for x in open(out)]
    assert got == ranked + [rules[1], rules[3]]


def test_a_failed_background_stage_stops_the_pipeline_naming_it(tmp_path):
    pl = demo.Pipeline(str(tmp_path), quick=True)
    pl.stage("bad stage", str(tmp_path / "never"), [["toy/world.py", "--no-such-flag"]], background=True)
    assert pl.bg is not None  # running in its own process; this one goes on
    with pytest.raises(SystemExit, match=r"stage bad stage failed \(exit 1\) in the background(.|\n)*"
                                         r"logs/bad_stage.log(.|\n)*--no-such-flag"):
        pl.join()
    assert pl.bg is None and "--no-such-flag" in (tmp_path / "pipeline.log").read_text()
