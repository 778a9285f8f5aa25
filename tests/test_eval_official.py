"""The README's evaluation commands, run as written on the public-data tree (tests/public_data.py): CHAIR from COCO's
own files, POPE's official question files, MMHal-Bench's template with the judge template read from a file shaped
like LLaVA-RLHF's, then `report`. Only what a tiny model needs changes: --max-new-tokens 3 on generate, --num-images 7
on chair-gt (the tree has 7 val images), and a stub OpenAI-compatible judge on loopback."""
import json
import os
import shlex

import pytest

import eval as ev
from rehearsal.public_data import make_public_data
from rehearsal.stub_openai import StubServer
from test_eval_generate import make_checkpoint

# keep in step with the README's "Evaluation on the official files" block
README = r"""
# CHAIR: COCO val2014 -> ground truth + a seeded 500-image sample (publish $GT/sample_ids.txt) -> captions -> scores
python eval.py chair-gt --recipe recipes/eval.toml:chair \
    --instances $COCO/annotations/instances_val2014.json --captions $COCO/annotations/captions_val2014.json \
    --images-dir $COCO/val2014 --synonyms $SYNONYMS --output $GT
python eval.py generate --recipe recipes/eval.toml:chair --checkpoint $CKPT \
    --questions $GT/chair_questions.jsonl --output $RUN/chair_answers.jsonl
python eval.py chair --answers $RUN/chair_answers.jsonl --annotations $GT/chair_gt.json --out $RUN/chair.json

# POPE: the official question files -> answers -> metrics per split (report: the mean F1 of the three splits)
for s in random popular adversarial; do
  python eval.py generate --recipe recipes/eval.toml:pope --checkpoint $CKPT \
      --questions $POPE/output/coco/coco_pope_$s.json --image-root $COCO/val2014 --output $RUN/pope_${s}_answers.jsonl
  python eval.py pope --recipe recipes/eval.toml:pope --answers $RUN/pope_${s}_answers.jsonl \
      --questions $POPE/output/coco/coco_pope_$s.json --out $RUN/pope_$s.json
done

# MMHal-Bench: the template -> answers (+ the filled-in template) -> the judge with the official judge prompt
python eval.py generate --recipe recipes/eval.toml:mmhal --checkpoint $CKPT \
    --questions $MMHAL/response_template.json --image-root $MMHAL/images \
    --output $RUN/mmhal_answers.jsonl --filled-template $RUN/mmhal_response.json
python eval.py mmhal --recipe recipes/eval.toml:mmhal --questions $MMHAL/response_template.json \
    --answers $RUN/mmhal_answers.jsonl --judge-template $LLAVA_RLHF/Eval/eval_gpt_mmhal.py --out $RUN/mmhal.json

python eval.py report $RUN
"""
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
