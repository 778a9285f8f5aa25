"""train.py under torchrun (2 gloo ranks on the CPU) against one process: POVID's two stages under DDP and FSDP2,
the reference cache under FSDP2 with a trained projector, a trained projector on text-only micro-batches under
DDP, the image check shared between the ranks, ranks that load different data, and rank 0's long export. One
torchrun launch runs every case (tests/train_ranks.py); each test reads its own."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from train_fixtures import ROOT, args, metrics

BASE = ["--micro_batch_size=2", "--lora_rank=4", "--max_steps=2", "--device=cpu"]
POVID = ["--mode=povid", "--povid_stage1_steps=2", "--noise_t=800"]
CASES = {  # name: (train.py flags beyond BASE, the fault train_ranks.py stands in, the data file)
    "povid_ddp": (POVID, None, "pairs.jsonl"),
    "povid_fsdp_projector": (POVID + ["--fsdp=True", "--train_projector=True"], "record_models_alive",
                             "pairs.jsonl"),
    "refcache_fsdp_projector": (["--fsdp=True", "--ref_cache=True", "--train_projector=True", "--save_every=1"],
                                None, "pairs.jsonl"),
    "text_only_ddp_projector": (["--train_projector=True", "--micro_batch_size=1", "--on_bad_sample=skip"],
                                "record_image_checks", "mixed.jsonl"),
    "ranks_disagree": ([], "drop_row_on_rank1", "pairs.jsonl"),
    "slow_export": (["--export_every=1"], "slow_export_on_rank0", "pairs.jsonl"),
}


def case_args(world, out, name):
    extra, _, data = CASES[name]
    mode = next((a.split("=")[1] for a in extra if a.startswith("--mode=")), "dpo")
    return [a for a in args(world, out, *BASE, *extra, mode=mode)] + [f"--data={world}/{data}"]


def mixed_data(world):
    """Half the pairs text-only (TRL JSONL allows it: no image, no <image> in the prompt), one image missing."""
    rows = [json.loads(x) for x in (world / "pairs.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        if i % 2:
            del r["image"]
            r["prompt"] = r["prompt"].replace("<image>", "").strip()
    rows[2]["image"] = "images/nope.png"
    (world / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def ranks(train_world, tmp_path_factory):
    """Every case on 2 ranks, one launch -> (its output dir, {case: [rank 0's outcome, rank 1's]})."""
    mixed_data(train_world)
    out = tmp_path_factory.mktemp("ranks")
    cases = [{"name": n, "args": case_args(train_world, out / n, n), "fault": f} for n, (_, f, _) in CASES.items()]
    (out / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(out / "ranks.log", "w") as log:  # what the ranks printed, also when the launch hangs
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "tests/train_ranks.py", str(out / "cases.json"), str(out)], cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT, timeout=600)
    text = (out / "ranks.log").read_text()
    assert res.returncode == 0, text[-6000:]
    got = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, {n: [got[0].get(n), got[1].get(n)] for n in CASES}, text


def one_process(world, tmp_path, name):
    """The case in this process, without torchrun: the same global batch."""
    out = tmp_path / name
    train_args = [a for a in case_args(world, out, name) if a != "--fsdp=True"]
    import train
    train.main(train_args)
    return out


def assert_same_run(a, b, loss_tol=1e-5, weight_tol=1e-4):
    """Equal losses, step by step, and equal exported models (Adam-amplified summation order: 1e-4)."""
    la, lb = metrics(a), metrics(b)
    assert len(la) == len(lb) and len(la) > 0
    for x, y in zip(la, lb):
        assert x["loss"] == pytest.approx(y["loss"], abs=loss_tol), (x, y)
    wa, wb = load_file(str(a / "model/model.safetensors")), load_file(str(b / "model/model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < weight_tol


@pytest.mark.parametrize("name", ["povid_ddp", "povid_fsdp_projector"])
def test_povid_both_stages_on_two_ranks_equal_one_process(ranks, train_world, tmp_path, name):
    """Stage 1 (DPO, merged on export) then stage 2 (POVID from and against it) in one command: each stage's losses
    and model as in one process; under FSDP2 with the projector trained too (its frozen copy is the reference).
    Stage 2 reads stage 1's model only once rank 0 wrote it, and stage 1's model is freed before."""
    out, outcome, log = ranks
    assert outcome[name] == ["ok", "ok"], log[-3000:]
    one = one_process(train_world, tmp_path, name)
    assert_same_run(out / name / "stage1", one / "stage1")
    assert_same_run(out / name, one)
    assert metrics(one / "stage1")[0]["loss"] == pytest.approx(0.6931472, abs=1e-7)  # the reference is the policy
    assert metrics(one)[0]["loss"] == pytest.approx(0.6931472, abs=3e-7)  # its 3P-row forward: GEMMs round apart
    if name == "povid_fsdp_projector":  # FSDP's hooks hold reference cycles: stage 1 is collected before stage 2
        assert [(out / f"alive_rank{r}.txt").read_text() for r in (0, 1)] == ["\nFalse\n"] * 2

def test_reference_cache_under_fsdp_trains_the_projector(ranks, train_world, tmp_path):
    """--ref_cache's pass left FSDP2's root group whole, so the optimizer held whole tensors: the projector never
    trained and the first checkpoint died in get_optimizer_state_dict. Now: the run of one process, checkpoints
    included, and the projector moved."""
    out, outcome, log = ranks
    assert outcome["refcache_fsdp_projector"] == ["ok", "ok"], log[-3000:]
    one = one_process(train_world, tmp_path, "refcache_fsdp_projector")
    assert_same_run(out / "refcache_fsdp_projector", one)
    start = load_file(str(train_world / "ckpt/model.safetensors"))
    end = load_file(str(out / "refcache_fsdp_projector/model/model.safetensors"))
    proj = [k for k in end if "projector" in k]
    assert proj and all(not torch.equal(start[k], end[k]) for k in proj)


def test_text_only_micro_batches_with_a_trained_projector_and_a_shared_image_check(ranks, train_world, tmp_path):
    """DDP with the projector trained and micro-batches without an image (it gets no gradient there): the run of
    one process. The images were opened once each, shared between the ranks, and the missing one skipped on both."""
    out, outcome, log = ranks
    assert outcome["text_only_ddp_projector"] == ["ok", "ok"], log[-3000:]
    one = one_process(train_world, tmp_path, "text_only_ddp_projector")
    assert_same_run(out / "text_only_ddp_projector", one)
    checked = [(out / f"checked_rank{r}.txt").read_text().split() for r in (0, 1)]
    rows = [json.loads(x) for x in (train_world / "mixed.jsonl").read_text().splitlines()]
    images = {os.path.join(train_world, r["image"]) for r in rows if "image" in r}
    assert checked[0] and checked[1] and not set(checked[0]) & set(checked[1])
    assert sorted(checked[0] + checked[1]) == sorted(images)
    assert "skipped 1 x missing image" in log and "mixed.jsonl:3 (id" in log


def test_ranks_that_kept_different_samples_stop_naming_the_rank_and_sample(ranks):
    _, outcome, log = ranks
    for msg in outcome["ranks_disagree"]:  # both ranks stop with the same message, neither hangs
        assert "the ranks kept different samples (rank 0: 24, rank 1: 23)" in msg and "pairs.jsonl:24" in msg, msg


def test_rank0s_long_export_does_not_hit_the_collective_timeout(ranks):
    """Rank 0 merges and writes each export while the others wait: longer than the process group's timeout (5 s
    here, 10-30 min on real runs) is fine, since they wait in a group of their own (24 h)."""
    out, outcome, log = ranks
    assert outcome["slow_export"] == ["ok", "ok"], log[-3000:]
    assert (out / "slow_export/exports/step_000001/model.safetensors").is_file()


def test_clip_ranks_barriers_wait_hours(monkeypatch):
    """hallucinate.py's ranks meet at barriers after their shares (uneven after a resume, or by answer lengths):
    its process group waits hours there, not gloo's default 30 minutes."""
    import torch.distributed as dist
    import hallucinate
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.update(kw, backend=backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    hallucinate._distributed()
    assert seen["backend"] == "gloo" and seen["timeout"].total_seconds() >= 24 * 3600
