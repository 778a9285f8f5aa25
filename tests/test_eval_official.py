"""The README's evaluation commands, run as written on the public-data trees (rehearsal/public_data.py,
rehearsal/public_bench.py): CHAIR from COCO's own files, POPE's official question files, MMHal-Bench's template with
the judge template read from a file shaped like LLaVA-RLHF's, AMBER's data/ folder, Object HalBench's question file in
a RLAIF-V layout, ScienceQA's and MME's files, then `report`. Only what a tiny model needs changes: --max-new-tokens 3
on generate, --num-images 7 on chair-gt (the tree has 7 val images), and the rehearsal's stub OpenAI-compatible chat
model on loopback (judge and object extraction)."""
import json
import os
import re
import runpy
import shlex
import sys

import pytest

import eval as ev
from rehearsal.public_bench import make_amber, make_mme, make_objhal, make_public_bench, make_sqa
from rehearsal.public_data import make_public_data
from rehearsal.run import readme_block
from rehearsal.stub_openai import StubServer, rehearsal_handler
from evals.files import SHORT_ANSWER_SUFFIX
from test_eval_generate import make_checkpoint



def readme_eval_block():
    """The README's evaluation commands: the chair-gt line of its real-run block, its real-eval block, and a report
    over this one run (the README's report line names three runs)."""
    train = readme_block("real-run", "bash")
    gt = re.search(r"^python eval.py chair-gt .*?(?<!\\)$", train, re.S | re.M).group(0)
    return gt + "\n" + readme_block("real-eval", "bash") + "\npython eval.py report $RUN\n"


README = readme_eval_block()
EVAL_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eval.py")
TINY = {"generate": ["--max-new-tokens", "3"], "chair-gt": ["--num-images", "7"]}


def tiny(cmd: list[str]) -> list[str]:
    """What a tiny model needs: 3 new tokens (8 for Object HalBench: answers of <= 3 words never reach the
    extractor), 7 CHAIR images (the tree has 7)."""
    objhal = cmd[0] == "generate" and "recipes/eval.toml:objhal" in cmd
    return ["--max-new-tokens", "8"] if objhal else TINY.get(cmd[0], [])


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
    if body["messages"][0]["role"] == "system":  # Object HalBench's extraction request: the rehearsal's answer
        return rehearsal_handler(body)
    return "Faithful.\nRating: 4" if "dog" not in body["messages"][0]["content"].split("## response")[-1] \
        else "Rating: 1"


def test_readme_commands(tmp_path, monkeypatch, capsys):
    pub = make_public_data(tmp_path / "public", image_size=40)
    bench = make_public_bench(tmp_path / "public", coco=pub, image_size=40)
    make_checkpoint(tmp_path / "ckpt")
    rlhf = tmp_path / "LLaVA-RLHF" / "Eval"
    rlhf.mkdir(parents=True)
    (rlhf / "eval_gpt_mmhal.py").write_text('template = """Rate it, "Rating: N".\n## contents\n{}\n## question\n{}\n'
                                            '## reference\n{}\n## response\n{}\n"""\n')
    env = {"COCO": os.path.join(pub["root"], "coco"), "SYNONYMS": pub["synonyms"], "GT": str(tmp_path / "chair500"),
           "POPE": os.path.join(pub["root"], "pope"), "MMHAL": os.path.join(pub["root"], "mmhal"),
           "LLAVA_RLHF": str(tmp_path / "LLaVA-RLHF"), "CKPT": str(tmp_path / "ckpt"), "RUN": str(tmp_path / "run"),
           "AMBER": bench["amber_dir"], "OBJHAL": bench["objhal_dir"], "SQA": bench["sqa_dir"], "MME": bench["mme_dir"]}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # recipes/ is repo-relative
    cmds = commands(README)
    assert [c[0] for c in cmds] == ["chair-gt", "generate", "chair"] + ["generate", "pope"] * 3 + \
        ["generate", "mmhal", "generate", "amber", "generate", "objhal", "generate", "sqa", "generate", "mme", "report"]
    with StubServer(handler=judge) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        for cmd in cmds:
            ev.main(cmd + tiny(cmd))
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
    check_new_benchmarks(run, {k: env[k] for k in ("AMBER", "OBJHAL", "SQA", "MME")}, new_tokens=3)
    assert len(json.loads((run / "amber_responses.json").read_text())) == 20  # AMBER_1..6 and 14 yes/no questions
    objhal = json.loads((run / "objhal.json").read_text())["metrics"]  # the stub lists a cat and a couch each time:
    assert (objhal["n_short"], objhal["n_mentions"], objhal["n_hallucinated_mentions"]) == (0, 14, 12)  # true in 139
    assert objhal["response_hall"] == pytest.approx(6 / 7) and objhal["mention_hall"] == pytest.approx(12 / 14)
    md = (tmp_path / "report.md").read_text()
    assert "POPE F1 mean" in md and "MMHal judged by gpt-4-0314 with the official template" in md
    assert "POPE F1 mean of the 3 splits" not in capsys.readouterr().out  # one split per pope call here


def check_new_benchmarks(run, dirs: dict, new_tokens: int):
    """The metrics JSON of AMBER, Object HalBench, ScienceQA-IMG and MME from the README block run on the
    public_bench trees (dirs: the README's AMBER, OBJHAL, SQA, MME; also tests/test_rehearsal.py's): every question of
    each file answered once and scored, each with its recipe's protocol. Counts are read off the fixture files."""
    data = os.path.join(dirs["AMBER"], "data")
    with open(os.path.join(data, "query", "query_all.json")) as f:
        ids = [q["id"] for q in json.load(f)]
    with open(os.path.join(data, "annotations.json")) as f:
        annotations = json.load(f)
    kinds = [annotations[i - 1]["type"] for i in ids]
    amber = json.loads((run / "amber.json").read_text())
    m, printed = amber["metrics"], amber["metrics"]["official_printed"]
    n_gen = kinds.count("generative")
    assert n_gen >= 1 and (m["n"], m["n_generative"], m["n_discriminative"]) == (len(ids), n_gen, len(ids) - n_gen)
    assert printed["existence"]["n"] == kinds.count("discriminative-hallucination") >= 1
    assert printed["relation"]["n"] == kinds.count("discriminative-relation") + kinds.count("relation") >= 1
    assert printed["attribute"]["n"] == sum("attribute" in k for k in kinds) >= 1
    assert "amber_score" in m and amber["comparable"] is (not amber["matcher"].startswith("builtin"))
    assert [g["suffix"] for g in amber["protocol"]["gen"]] == ["", SHORT_ANSWER_SUFFIX]  # yes/no questions only
    assert amber["protocol"]["gen"][0]["max_new_tokens"] == new_tokens
    responses = json.loads((run / "amber_responses.json").read_text())  # AMBER's own [{id, response}] file
    assert [r["id"] for r in responses] == ids
    with open(os.path.join(dirs["OBJHAL"], "eval", "data", "obj_halbench_300_with_image.jsonl")) as f:
        n_obj = len(f.readlines())
    objhal = json.loads((run / "objhal.json").read_text())
    m = objhal["metrics"]
    assert (m["n_responses"], m["n_images"], m["n_missing"]) == (n_obj, n_obj, 0)
    log = run / "objhal_extract.jsonl"
    extracted = log.read_text().splitlines() if log.exists() else []
    assert len(extracted) == n_obj - m["n_short"]  # answers of <= 3 words are not sent (RLAIF-V's rule)
    assert objhal["extractor"]["name"].startswith("chat") and objhal["extractor"]["comparable"] is False  # stand-in
    with open(os.path.join(dirs["SQA"], "llava_test_CQM-A.json")) as f:
        sqa_q = json.load(f)
    sqa = json.loads((run / "sqa.json").read_text())["metrics"]
    n_img = sum("image" in q for q in sqa_q)
    assert (sqa["img_total"], sqa["n_answered"], sqa["total"]) == (n_img, n_img, len(sqa_q))  # SQA-IMG: image ones
    assert sqa["unparseable_rate"] == sqa["n_failed"] / n_img and sqa["img_correct"] + sqa["n_failed"] <= n_img
    with open(os.path.join(dirs["MME"], "llava_mme.jsonl")) as f:
        cats = [json.loads(x)["category"] for x in f]
    mme = json.loads((run / "mme.json").read_text())["metrics"]
    assert {k: v["n_questions"] for k, v in mme["subtasks"].items()} == {c: cats.count(c) for c in set(cats)}
    assert mme["n_questions"] == len(cats) and mme["complete"] is False  # a few of MME's 14 subtasks


@pytest.mark.parametrize("bad", ["echo hi", "for s in a b; do\npython eval.py x $s\n"])
def test_commands_reader_is_strict(bad):
    with pytest.raises((AssertionError, ValueError)):
        commands(bad)


def test_new_benchmarks_bad_input_is_one_line(tmp_path, monkeypatch):
    """Through eval.py's command line (its __main__), a user's bad file for AMBER, Object HalBench, ScienceQA and MME
    ends in one line naming the file and what is wrong, exit status 1 (sys.exit with a message), no traceback."""
    root = str(tmp_path)
    amber, objhal, sqa, mme = make_amber(root, image_size=16), make_objhal(root), make_sqa(root), make_mme(root)
    one = tmp_path / "one_answer.jsonl"  # answers the first AMBER question only
    one.write_text(json.dumps({"question_id": 1, "text": "A cat.", "gen": {}}) + "\n")
    other_split = tmp_path / "sqa_train.jsonl"  # problem 9 is in ScienceQA's train split
    other_split.write_text(json.dumps({"question_id": "9", "prompt": "<image>\nWhich is a mammal?\nA. shark\nB. whale"
                                       "\nAnswer with the option's letter from the given choices directly.",
                                       "text": "B"}) + "\n")
    cases = [(["amber", "--answers", str(one), "--questions", amber["amber_questions"], "--data", amber["amber_data"]],
              str(one), "19 of the 20 questions"),
             (["objhal", "--answers", str(one), "--questions", sqa["sqa_questions"], "--coco-dir", objhal["objhal_coco"],
               "--synonyms", objhal["objhal_synonyms"], "--offline"], sqa["sqa_questions"],
              "not Object HalBench's question file"),
             (["sqa", "--answers", str(other_split), "--base-dir", sqa["sqa_dir"]], str(other_split),
              "not problems of this split"),
             (["mme", "--answers", str(one), "--mme-root", mme["mme_root"]], str(one), "missing field 'prompt'")]
    for argv, path, what in cases:
        monkeypatch.setattr(sys, "argv", ["eval.py", *argv])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(EVAL_PY, run_name="__main__")
        msg = e.value.code
        assert isinstance(msg, str) and msg.startswith(f"eval.py: error: {path}") and what in msg, (argv[0], msg)
        assert "\n" not in msg and "Traceback" not in msg, (argv[0], msg)
