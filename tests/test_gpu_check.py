"""bench/gpu_check.py's budget: the parts share one time budget, a part gets min(its limit, what is left), a part that
would get too little is recorded as skipped (not silently dropped), a part killed at its limit is recorded as a
timeout, and gpu_check.json holds every part. Runs on the CPU with stand-in parts (python -c ...)."""
import json
import sys

import pytest

from bench import gpu_check  # bench/ is a namespace package under the repo root (conftest.py puts it on sys.path)


def _part(name, code, limit):
    return (name, [sys.executable, "-c", code], limit)


def test_budget_skips_and_timeouts_are_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_PART", 0.5)
    parts = [_part("ok", "print('fine')", 30),
             _part("slow", "import time; time.sleep(30)", 1.0),   # killed at its own 1 s limit
             _part("capped", "import time; time.sleep(30)", 30),  # gets what is left of the 4 s budget, not 30 s
             _part("late", "print('never')", 30)]                 # under MIN_PART left: skipped, with the reason
    res = gpu_check.run_parts(parts, str(tmp_path), budget=4.0, res={"parts": {}})
    p = res["parts"]
    assert p["ok"]["rc"] == 0 and "fine" in p["ok"]["tail"]
    assert p["slow"]["rc"] == "timeout" and 0.9 < p["slow"]["wall_s"] < 10
    # capped ran within the budget less what ok and slow used, not its own 30 s
    assert p["capped"]["rc"] == "timeout" and p["capped"]["limit_s"] <= 4.0 - 0.9
    assert p["late"]["rc"] == "skipped" and "budget" in p["late"]["why"] and "--only late" in p["late"]["why"]
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(on_disk["parts"]) == ["ok", "slow", "capped", "late"]
    assert not (tmp_path / "late.log").exists()


def test_unknown_part_name_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--only", "tests,nonesuch", "--out", "/nonexistent/never"])
    assert e.value.code == 2 and "nonesuch" in capsys.readouterr().err
