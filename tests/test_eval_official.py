"""The README's evaluation commands, run as written on the public-data tree (tests/public_data.py): CHAIR from COCO's
own files, POPE's official question files, MMHal-Bench's template with the judge template read from a file shaped
like LLaVA-RLHF's, then `report`. Only what a tiny model needs changes: --max-new-tokens 3 on generate, --num-images 7
on chair-gt (the tree has 7 val images), and a stub OpenAI-compatible judge on loopback."""
import json
import os
import re
import shlex

import pytest

import eval as ev
from rehearsal.public_data import make_public_data
from rehearsal.run import readme_block
from rehearsal.stub_openai import StubServer
from test_eval_generate import make_checkpoint



def readme_eval_block():
    """The README's evaluation commands: the chair-gt line of its real-run block, its real-eval block, and a report
    over this one run (the README's report line names three runs)."""
    train = readme_block("real-run", "bash")
    gt = re.search(r"^python eval.py chair-gt .*?(?<!\\)$", train, re.S | re.M).group(0)
    return gt + "\n" + readme_block("real-eval", "bash") + "\npython eval.py report $RUN\n"


README = readme_eval_block()
TINY = {"generate": ["--max-new-tokens", "3"], "chair-gt": ["--num-images", "7"]}


def commands(text: str):
    """The shell block as eval.py argument lists: continuation lines joined, one-level for-loops unrolled, $VARs
    expanded from os.environ (the subset of sh the block uses; anything else is an error, not a guess)."""
    lines = [x.strip() for x in text.replace("\\\n", " ").splitlines() if x.strip() and not x.strip().startswith("#")]
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("for "):
            var, _, rest = lines[i][4:].partition(" in ")
            values = rest.split(";")[0].split()
            end = lines.index("done", i)
            for v in values:
                os.environ[var] = v
                out += [shlex.split(os.path.expandvars(x)) for x in lines[i + 1:end]]
            i = end + 1
        else:
            out.append(shlex.split(os.path.expandvars(lines[i])))
            i += 1
    for cmd in out:
        assert cmd[:2] == ["python", "eval.py"], cmd
    return [cmd[2:] for cmd in out]


def judge(body):
    return "Faithful.\nRating: 4" if "dog" not in body["messages"][0]["content"].split("## response")[-1] \
        else "Rating: 1"


def test_readme_commands(tmp_path, monkeypatch, capsys):
    pub = make_public_data(tmp_path / "public", image_size=40)
    make_checkpoint(tmp_path / "ckpt")
    rlhf = tmp_path / "LLaVA-RLHF" / "Eval"
    rlhf.mkdir(parents=True)
    (rlhf / "eval_gpt_mmhal.py").write_text('template = """Rate it, "Rating: N".\n## contents\n{}\n## question\n{}\n'
                                            '## reference\n{}\n## response\n{}\n"""\n')
    env = {"COCO": os.path.join(pub["root"], "coco"), "SYNONYMS": pub["synonyms"], "GT": str(tmp_path / "chair500"),
           "POPE": os.path.join(pub["root"], "pope"), "MMHAL": os.path.join(pub["root"], "mmhal"),
           "LLAVA_RLHF": str(tmp_path / "LLaVA-RLHF"), "CKPT": str(tmp_path / "ckpt"), "RUN": str(tmp_path / "run")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # recipes/ is repo-relative
    cmds = commands(README)
    assert [c[0] for c in cmds] == ["chair-gt", "generate", "chair"] + ["generate", "pope"] * 3 + \
        ["generate", "mmhal", "report"]
    with StubServer(handler=judge) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        for cmd in cmds:
            ev.main(cmd + TINY.get(cmd[0], []))
    run = tmp_path / "run"
    chair = json.loads((run / "chair.json").read_text())
    assert chair["metrics"]["n_captions"] == 7
    assert chair["protocol"]["gen"][0]["temperature"] == 0.2 and chair["protocol"]["gen"][0]["template"] == "vicuna_v1"
    for s in ("random", "popular", "adversarial"):
        pope = json.loads((run / f"pope_{s}.json").read_text())
        assert pope["split"] == s and pope["parser"].startswith("official") and pope["metrics"]["n"] == 6
        assert pope["protocol"]["gen"][0]["suffix"] == "\nAnswer the question using a single word or phrase."
    mm = json.loads((run / "mmhal.json").read_text())
    assert mm["judge_template"]["name"] == "official" and mm["judge_model"] == "gpt-4-0314"
    assert mm["metrics"]["complete"] and mm["protocol"]["gen"][0]["max_new_tokens"] == 3
    assert len(json.loads((run / "mmhal_response.json").read_text())) == 8
    md = (tmp_path / "report.md").read_text()
    assert "POPE F1 mean" in md and "MMHal judged by gpt-4-0314 with the official template" in md
    assert "POPE F1 mean of the 3 splits" not in capsys.readouterr().out  # one split per pope call here


@pytest.mark.parametrize("bad", ["echo hi", "for s in a b; do\npython eval.py x $s\n"])
def test_commands_reader_is_strict(bad):
    with pytest.raises((AssertionError, ValueError)):
        commands(bad)
