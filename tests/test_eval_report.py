"""eval.py report: one row per run dir from its metrics JSONs, percent formatting, missing cells, the POPE F1 mean
only over all three splits, errors."""
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
    ev.main(["report", str(base), str(povid)])
    md = (tmp_path / "runs" / "report.md").read_text()  # default: the run dirs' common parent
    assert md == capsys.readouterr().out
    lines = md.splitlines()
    head = lines[4]
    assert head.startswith("| run | CHAIR_s | CHAIR_i | recall | len | POPE-random acc | F1 | yes |")
    assert "POPE F1 mean | MMHal score | MMHal hall. |" in head
    assert lines[6] == ("| base | 50.0 | 12.5 | 80.0 | 42.2 | 90.0 | 88.0 | 45.0 | 80.0 | 78.0 | 55.0 | 70.0 | "
                        "71.0 | 60.0 | 79.0 | 2.50 | 40.0 |")
    # LLaVA's POPE number is the mean F1 of the three splits: with one split scored there is none
    assert lines[7] == "| povid | 25.0 | 5.0 | 75.0 | 30.0 | 92.0 | 90.0 | 50.0 | – | – | – | – | – | – | – | – | – |"
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
