"""eval.py report: one row per metric, one column per run, the change from the first run and the published numbers;
percent formatting, missing cells, the POPE F1 mean only over all three splits, not-comparable marks, errors."""
import json

import pytest

import eval as ev
from evals.report import write_report


def _pope(split, acc, f1, yes):
    return {"kind": "pope", "split": split, "metrics": {"accuracy": acc, "f1": f1, "yes_ratio": yes}}


def _write(d, name, obj):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(obj))


def test_report(tmp_path, capsys):
    base, povid = tmp_path / "runs" / "base", tmp_path / "runs" / "povid"
    _write(base, "chair.json", {"kind": "chair", "metrics": {"chair_s": 0.5, "chair_i": 0.125, "recall": 0.8,
                                                             "length": 42.25}, "per_caption": {}})
    _write(base, "pope_random.json", _pope("random", 0.9, 0.88, 0.45))
    _write(base, "pope_popular.json", _pope("popular", 0.8, 0.78, 0.55))
    _write(base, "pope_adversarial.json", _pope("adversarial", 0.7, 0.71, 0.6))
    _write(base, "mmhal.json", {"kind": "mmhal", "metrics": {"score": 2.5, "hallucination_rate": 0.4}})
    _write(base, "train_config.json", {"lr": 1e-5})  # not a metrics file: ignored
    _write(povid, "chair.json", {"kind": "chair", "metrics": {"chair_s": 0.25, "chair_i": 0.05, "recall": 0.75,
                                                              "length": 30.0}})
    _write(povid, "pope_random.json", _pope("random", 0.92, 0.9, 0.5))
    _write(povid, "amber.json", {"kind": "amber", "matcher": "builtin: ...", "comparable": False,
                                 "metrics": {"chair": 0.061, "f1": 0.75, "n_unparsed": 3}})
    ev.main(["report", str(base), str(povid)])
    md = (tmp_path / "runs" / "report.md").read_text()  # default: the run dirs' common parent
    assert md == capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ")}
    assert rows["benchmark"] == ("| benchmark | base | povid | change vs base | published LLaVA-1.5-7B | "
                                 "published POVID | published CLIP-DPO |")
    # the change in the row's units, ✓ where it moved the right way (CHAIR down, recall up)
    assert rows["CHAIR_s"] == "| CHAIR_s | 50.0 | 25.0 | -25.0 ✓ | 66.8 | 31.8 |  |"
    assert rows["CHAIR recall"] == "| CHAIR recall | 80.0 | 75.0 | -5.0 ✗ |  |  |  |"
    assert rows["CHAIR words per caption"].startswith("| CHAIR words per caption | 42.2 | 30.0 | -12.2")
    # LLaVA's POPE number is the mean F1 of the three splits: the povid run scored one split, so it has none
    assert rows["POPE F1 mean"] == "| POPE F1 mean | 79.0 | – |  | 85.9 | 86.9 |  |"
    assert rows["POPE random F1"].startswith("| POPE random F1 | 88.0 | 90.0 | +2.0 ✓ |")
    assert rows["MMHal score"].startswith("| MMHal score | 2.50 | – |")
    # a benchmark only the tuned run has, marked not comparable (the built-in AMBER matcher), beside the papers
    assert rows["AMBER CHAIR*"] == "| AMBER CHAIR* | – | 6.1 |  | 7.8 | 5.3 | 3.7 |"
    assert rows["AMBER yes/no answers not exactly Yes/No*"].startswith("| AMBER yes/no answers not exactly "
                                                                         "Yes/No* | – | 3 |")
    assert "- povid: amber: builtin: ..." in md and "AMBER CHAIR CLIP-DPO: CLIP-DPO via SENTINEL Tab. 1" in md
    assert "POPE all acc" not in md  # rows no run has are left out
    rj = json.loads((tmp_path / "runs" / "report.json").read_text())
    assert [r["run"] for r in rj["runs"]] == [str(base), str(povid)]
    assert rj["runs"][0]["pope"]["adversarial"]["f1"] == 0.71 and rj["runs"][1]["mmhal"] is None
    # a second file of the same kind, and a dir without metrics, are errors
    _write(povid, "pope_random_again.json", _pope("random", 0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="both .*pope_random.json and .*pope_random_again.json"):
        write_report([str(povid)], str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no metrics JSON"):
        write_report([str(tmp_path / "empty")], str(tmp_path))
