"""The toy-world pipeline end to end in quick mode (every stage through the real entry points, the SFT as two DDP
ranks, the checkpoint selection on validation, the report), and its parts on hand-made inputs: the selection rule,
the equal-recall comparison, the verdicts, the seeds' summary, the stage runner. The end-to-end run asserts that
the pipeline works, not the hallucination targets (those need the full run)."""
import json
import os
import sys

import pytest

from toy import demo, pairs, seeds, selection
from toy import report as demo_report
from toy.runner import Runner

RUNS = ("baseline", *selection.METHODS)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick pipeline for the module's tests: (its directory, its report.json)."""
    out = tmp_path_factory.mktemp("demo") / "toy"
    argv = sys.argv
    sys.argv = ["demo.py", "--quick", "--out", str(out)]
    try:
        demo.main()
    finally:
        sys.argv = argv
    return out, json.loads((out / "report.json").read_text())


def test_quick_pipeline_end_to_end(quick):
    out, rep = quick
    for run in RUNS:
        for key in ("chair_s", "chair_i", "recall", "pope_f1", "pope_yes_ratio"):
            assert 0.0 <= rep[run][key] <= 1.0, (run, key)
    assert rep["n_test_images"] == demo.QUICK["n_test"] and rep["wall_s"] > 0 and rep["stages_reused"] == []
    assert rep["seed"] == 0 and rep["host"]["cores"] >= 1 and len(rep["load_avg"]["start"]) == 3
    assert "sft" in rep["stage_seconds"]  # the SFT ran, as two DDP ranks:
    assert "torchrun --standalone --nproc_per_node=2 train.py --mode=sft" in (out / "pipeline.log").read_text()
    for run in ("baseline", "povid"):  # the mechanism table: companions named when absent / present
        assert set(rep[run]["companions_named"]) <= {"absent", "clear", "faint", "covered"}
        assert "absent" in rep[run]["companions_named"]
        roles = rep[run]["recall_by_role"]  # and recall by role: anchors are in every scene
        assert {"anchor", "companion"} <= set(roles) <= \
            {"anchor", "companion", "extra", "hallucinations_absent_companion"}
    for run in selection.METHODS:  # every change against the baseline comes with its bootstrap interval
        vs = rep[run]["vs_baseline"]
        assert set(vs) == {"chair_i_rel", "chair_s", "recall", "pope_f1"}
        assert all(v["ci95"][0] <= v["ci95"][1] for v in vs.values())
        assert vs["recall"]["change"] == pytest.approx(rep[run]["recall"] - rep["baseline"]["recall"])
    assert "vs_baseline" not in rep["baseline"] and "paired-bootstrap intervals" in (out / "report.md").read_text()
    assert os.path.getsize(out / "examples.png") > 1000 and os.path.getsize(out / "curves.png") > 1000
    text = (out / "report.md").read_text()
    assert "| povid |" in text and "## The selection (validation scenes)" in text
    assert rep["smoke_run"] and text.startswith("# Toy world") and "**A smoke run (`--quick`)**" in text
    assert len(rep["verdicts"]) == 4 and all("seed 0" in v and "host" in v for v in rep["verdicts"])
    assert "checkpoint step" in rep["verdicts"][1]


def test_every_checkpoint_on_validation_only_the_selected_one_on_test(quick):
    out, rep = quick
    curves, base = rep["validation"]["curves"], rep["validation"]["baseline"]
    q = demo.QUICK
    assert [pt["step"] for pt in curves["povid"]] == [0, q["stage1_steps"], q["stage1_steps"] + q["dpo_steps"]]
    assert [pt["step"] for pt in curves["clip_dpo"]] == [0, 2, 4]  # an export (step 2) and the final model
    assert curves["clip_dpo"][1]["checkpoint"].endswith("clip_dpo/exports/step_000002")
    assert curves["injection_only"][1] == curves["povid"][1]  # the shared stage 1, evaluated once
    assert sorted(os.listdir(out / "runs")) == sorted(RUNS)  # the test scenes: the baseline + one per method
    for m in selection.METHODS:
        chosen = json.loads((out / "select" / f"{m}.json").read_text())["selected"]
        assert rep[m]["step"] == chosen["step"] and chosen == selection.select(curves[m], base)
        models = {json.loads(x)["model"] for x in (out / "runs" / m / "chair_answers.jsonl").open()}
        assert models == {chosen["checkpoint"]}  # the test answers come from the selected checkpoint alone
        for pt in curves[m][1:]:
            assert os.path.isfile(os.path.join(pt["checkpoint"], "model.safetensors"))
            assert pt["within_guards"] == selection.within_guards(pt, base)
    answered = {json.loads(x)["image_id"] for x in (out / "runs_val/povid/step_000004/chair_answers.jsonl").open()}
    assert answered == set(json.loads((out / "world/splits.json").read_text())["val"])


def test_a_rerun_reuses_every_stage_and_another_seed_is_refused(quick, monkeypatch):
    out, rep = quick
    log_size = os.path.getsize(out / "pipeline.log")
    monkeypatch.setattr(sys, "argv", ["demo.py", "--quick", "--out", str(out)])
    demo.main()
    with open(out / "pipeline.log") as f:
        f.seek(log_size)
        assert "train.py" not in f.read()
    again = json.loads((out / "report.json").read_text())
    assert again["stages_reused"] and "stages reused from an earlier run" in (out / "report.md").read_text()
    varies = ("wall_s", "stages_reused", "stage_seconds", "load_avg")
    assert {k: again[k] for k in rep if k not in varies} == {k: rep[k] for k in rep if k not in varies}
    # another seed's models must not be mixed with these: reusing the directory is refused, naming the marker
    monkeypatch.setattr(sys, "argv", ["demo.py", "--quick", "--out", str(out), "--seed", "1"])
    with pytest.raises(SystemExit, match="train_config.json.*--seed 0"):
        demo.main()


def test_seeds_summary_gives_each_seed_then_mean_and_spread(quick, tmp_path):
    """The seeds' report from two copies of the quick report, the second with POVID's CHAIR_i changed: each seed's
    number, their mean and standard deviation, the targets on the mean."""
    _, rep = quick
    other = json.loads(json.dumps(rep))
    other["seed"] = 7
    other["povid"]["chair_i"] = rep["povid"]["chair_i"] / 2
    s = seeds.write_seeds_report(str(tmp_path), [rep, other], 60.0, (1.0, 1.0, 1.0))
    cut = [100 * (rep["povid"]["chair_i"] / rep["baseline"]["chair_i"] - 1),
           100 * (other["povid"]["chair_i"] / other["baseline"]["chair_i"] - 1)]
    t = s["table"]["povid"]["chair_i_rel"]
    assert t["seeds"] == pytest.approx(cut) and t["mean"] == pytest.approx(sum(cut) / 2)
    assert t["sd"] == pytest.approx(abs(cut[0] - cut[1]) / 2 ** 0.5)
    assert s["seeds"] == [0, 7] and len(s["verdicts"]) == 3 and "mean over seeds 0, 7" in s["verdicts"][0]
    assert "| povid |" in (tmp_path / "report.md").read_text() and (tmp_path / "curves.png").exists()


# ------------------------------------------------------------------------------------------- the claim's rules
def _pt(step, recall, pope_f1=0.7, chair_i=0.15):
    return {"step": step, "recall": recall, "pope_f1": pope_f1, "chair_i": chair_i, "checkpoint": f"ckpt{step}"}


def test_selection_takes_the_last_checkpoint_within_the_guards():
    base = _pt(0, 0.77)
    curve = [base, _pt(50, 0.76), _pt(100, 0.74), _pt(150, 0.739), _pt(200, 0.745, pope_f1=0.694), _pt(250, 0.73)]
    # 150: recall 3.1 points down (out); 200: POPE F1 0.6 down (out); 100 is the last within both guards
    assert selection.select(curve, base)["step"] == 100
    assert selection.select(curve + [_pt(300, 0.741, pope_f1=0.696)], base)["step"] == 300  # back within: the last
    assert selection.select([base, _pt(50, 0.70)], base)["step"] == 0  # none within: the start model
    assert selection.within_guards(_pt(1, 0.74, 0.695), base)  # exactly at both guards is within


def test_equal_recall_gives_each_control_its_best_point_on_the_common_range():
    base = _pt(0, 0.80, chair_i=0.20)
    povid = [base, _pt(50, 0.78, chair_i=0.16), _pt(100, 0.76, chair_i=0.12)]
    ctl = [base, _pt(50, 0.79, chair_i=0.19), _pt(100, 0.75, chair_i=0.15)]  # crosses 0.76 at CHAIR_i 0.16
    shy = [base, _pt(50, 0.79, chair_i=0.165), _pt(100, 0.785, chair_i=0.18)]  # never below 0.785: compared there
    curves = {"povid": povid, "injection_only": ctl, "noise_only": shy, "nll_only": ctl, "clip_dpo": ctl}
    eq = selection.equal_recall(curves, povid[2])
    assert eq["injection_only"]["recall"] == 0.76 and eq["injection_only"]["control"] == pytest.approx(0.16)
    assert eq["injection_only"]["povid"] == pytest.approx(0.12) and eq["injection_only"]["ahead"]
    # noise_only at recall 0.785 (its lowest): its best there 0.165; POVID crosses 0.785 at 0.17 -> not ahead
    assert eq["noise_only"]["recall"] == 0.785 and eq["noise_only"]["control"] == pytest.approx(0.165)
    assert eq["noise_only"]["povid"] == pytest.approx(0.17) and not eq["noise_only"]["ahead"]


def test_verdicts_name_host_seed_and_checkpoint_and_check_the_targets():
    base = {"chair_i": 0.15, "chair_s": 0.45, "recall": 0.77, "pope_f1": 0.72}
    test = {"baseline": base, "povid": {**base, "chair_i": 0.10, "chair_s": 0.30, "recall": 0.73},
            "clip_dpo": {**base, "chair_i": 0.13, "chair_s": 0.40}}
    chosen = {"povid": _pt(300, 0.75, pope_f1=0.72), "clip_dpo": _pt(0, 0.77, pope_f1=0.72)}
    ahead = {c: {"recall": 0.75, "povid": 0.1, "control": 0.12, "ahead": True} for c in selection.CONTROLS}
    lines, met = selection.verdicts(test, chosen, _pt(0, 0.77, pope_f1=0.72), ahead, "host X x2, seed 3")
    assert met == {"baseline": True, "povid": True, "clip_dpo": False, "povid_ahead": True}  # clip_dpo: step 0
    assert "povid (host X x2, seed 3, checkpoint step 300): test CHAIR_i -33.3%" in lines[1]
    assert "recall -4.0" in lines[1] and "OUTSIDE the guards there" in lines[1]  # the test recall fell by 4
    worse = {**test, "clip_dpo": {**base, "chair_i": 0.18}}  # CHAIR_i up: a signed change, not "--20.0%"
    assert "test CHAIR_i +20.0% relative" in selection.verdicts(worse, chosen, _pt(0, 0.77, pope_f1=0.72), ahead,
                                                                "h")[0][2]
    ahead["nll_only"]["ahead"] = False
    assert not selection.verdicts(test, chosen, _pt(0, 0.77, pope_f1=0.72), ahead, "h")[1]["povid_ahead"]


# ------------------------------------------------------------------------------------------- report and data parts
def test_recall_by_role_and_companion_mentions(tmp_path):
    """The report's mechanism tables on two hand-made captions: a table scene with plate, fork (faint) and a ball
    (an extra), captioned "plate, fork, cup" (cup: an absent companion); a street scene with car and dog, captioned
    "car, bench" (bench: not a street companion)."""
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
    assert demo_report.recall_by_role(str(tmp_path), str(tmp_path)) == {
        "anchor": 1.0, "companion": 0.5, "extra": 0.0, "hallucinations_absent_companion": 0.5}
    # absent companions: cup, bottle (table), traffic light, person (street); only cup named
    assert demo_report.companion_mentions(str(tmp_path), str(tmp_path)) == {"absent": 0.25, "clear": 0.0, "faint": 1.0}


def test_clip_dpo_data_adds_one_qa_pair_per_ranked_image(tmp_path):
    """CLIP-DPO's training file: every ranked caption pair, then the first QA pair of each ranked image (none of an
    image the ranking left out, none of its caption pair)."""
    pair = lambda i, img, prompt, c, r: {"id": i, "image": img, "prompt": prompt, "chosen": c, "rejected": r}  # noqa
    ranked = [pair("a:clip-rank", "../w/a.png", "<image>\nDescribe this image.", "a cup .", "a cup and a fork ."),
              pair("b:clip-rank", "../w/b.png", "<image>\nDescribe this image.", "a car .", "a car and a dog .")]
    rules = [pair("a:rules", "../w/a.png", "<image>\nDescribe this image.", "a cup .", "a cup and a fork ."),
             pair("a#1:rules", "../w/a.png", "Is there a fork in the image?", "No.", "Yes."),
             pair("a#2:rules", "../w/a.png", "What color is the cup?", "red.", "blue."),
             pair("b#1:rules", "../w/b.png", "Is there a car in the image?", "Yes.", "No."),
             pair("c#1:rules", "../w/c.png", "Is there a dog in the image?", "No.", "Yes.")]
    for name, rows in (("ranked.jsonl", ranked), ("rules.jsonl", rules)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = pairs.write_clip_dpo_data(str(tmp_path / "ranked.jsonl"), str(tmp_path / "rules.jsonl"),
                                    str(tmp_path / "clip_dpo.jsonl"))
    got = [json.loads(x) for x in open(out)]
    assert got == ranked + [rules[1], rules[3]]


# ------------------------------------------------------------------------------------------- the stage runner
def test_stages_run_after_what_they_need_and_a_failure_stops_the_pipeline_naming_it(tmp_path):
    r = Runner(str(tmp_path))
    order = []
    r.stage("a", str(tmp_path / "a.txt"), inline=lambda: (order.append("a"), (tmp_path / "a.txt").write_text("")))
    r.stage("b", str(tmp_path / "b.txt"), inline=lambda: order.append("b"), needs=["a"])
    with pytest.raises(ValueError, match="needs undeclared stages"):
        r.stage("c", "x", inline=lambda: None, needs=["zzz"])
    r.run()
    assert order == ["a", "b"] and r.ran == ["a", "b"]
    r2 = Runner(str(tmp_path))
    r2.stage("a", str(tmp_path / "a.txt"), inline=lambda: order.append("again"))  # its output exists: reused
    r2.stage("bad stage", str(tmp_path / "never"), [["toy/world.py", "--no-such-flag"]], needs=["a"])
    with pytest.raises(SystemExit, match=r"stage bad stage failed \(exit \d\)(.|\n)*"
                                         r"logs/bad_stage.log(.|\n)*--no-such-flag"):
        r2.run()
    assert r2.reused == ["a"] and order == ["a", "b"] and "--no-such-flag" in (tmp_path / "pipeline.log").read_text()
    assert r2.running == {}


def test_the_readmes_try_it_by_hand_block(quick, tmp_path):
    """The README's "try it by hand" block, run as written on the quick demo's output (its first line made `quick`):
    only the paths change - Q, the out/try folder - and `python` is this interpreter."""
    import subprocess
    from rehearsal.run import ROOT, readme_block
    lines = readme_block("try", "bash").splitlines()
    assert lines[0].startswith("make demo-quick")
    script = ("\n".join(lines[1:]).replace("Q=out/toy_quick", f"Q={quick[0]}").replace("out/try", str(tmp_path))
              .replace("python ", f"{sys.executable} "))
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    assert "--max_steps" in r.stdout and "--lora_rank" in r.stdout  # the --help listing
    assert len(json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[-1])) > 0
    chair = json.loads((tmp_path / "chair.json").read_text())
    assert chair["kind"] == "chair" and chair["metrics"]["n_captions"] == 24  # the quick world's test scenes
