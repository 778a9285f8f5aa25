"""train.py on a tiny toy world, one process: ln 2 at step 0 in every mode and dtype, learning, accumulation and the
plain loss, the reference cache, exact resume, atomic checkpoints, runs never mixed, bad input. Several ranks:
tests/test_train_ranks.py; flags: tests/test_train_config.py."""
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

import train
from model import Llava, LlavaConfig, Tokenizer
from train_fixtures import args, metrics, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def setup(train_world):
    return train_world  # tests/conftest.py


def weights(out):
    return load_file(os.path.join(out, "ckpt", "trainable.safetensors"))


def test_dpo_step0_is_ln2_and_learns_separable_pairs(setup, tmp_path):
    log = run(setup, tmp_path / "a", "--lora_rank=4", "--max_steps=25", "--lr=5e-3", "--beta=0.5",
              "--batch_size=8", "--micro_batch_size=8")
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 0
    assert log[-1]["rewards/accuracy"] == 1.0 and log[-1]["loss"] < 0.5
    assert os.path.isfile(tmp_path / "a/model/model.safetensors")  # merged export, llava-hf layout
    Llava.from_pretrained(str(tmp_path / "a/model"))


def test_micro_batch_accumulation_and_the_plain_loss_agree(setup, tmp_path):
    """Micro-batches of 1 accumulated = one of 4; the DPO run with 1 also takes the plain composition
    (--fused_loss=False: summed log-probs, then dpo.py's loss), the other the fused loss."""
    for mode in ("dpo", "sft"):
        plain = ["--fused_loss=False"] if mode == "dpo" else []
        a = run(setup, tmp_path / f"{mode}1", "--micro_batch_size=1", *plain, mode=mode)
        b = run(setup, tmp_path / f"{mode}4", "--micro_batch_size=4", mode=mode)
        for x, y in zip(a, b):
            assert x["loss"] == pytest.approx(y["loss"], abs=1e-5), mode
        wa, wb = weights(tmp_path / f"{mode}1"), weights(tmp_path / f"{mode}4")
        # weights: Adam divides by sqrt(v), so an entry whose gradient is at summation-order noise level can move by
        # up to lr (1e-3) per step either way (measured: a few such entries at ~1e-4). So: nearly all entries equal
        # to 1e-6, and none apart by more than 2 lr x 3 steps; the loss trajectory above is the 1e-5 check
        diff = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
        assert (diff <= 1e-6).float().mean() > 0.99 and diff.max() < 6e-3, (mode, (diff > 1e-6).sum(), diff.max())


def test_gradient_checkpointing_changes_nothing_but_memory(setup, tmp_path, monkeypatch):
    import model.llama as L
    calls = []
    real = L.checkpoint
    monkeypatch.setattr(L, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    a = run(setup, tmp_path / "plain", "--lora_rank=4")
    assert not calls
    b = run(setup, tmp_path / "ckpt", "--lora_rank=4", "--grad_checkpointing=True")
    assert len(calls) == 3 * 2  # every step, every decoder block of the policy pass (the reference is no_grad)
    assert [x["loss"] for x in a] == pytest.approx([x["loss"] for x in b], abs=1e-6)
    wa, wb = weights(tmp_path / "plain"), weights(tmp_path / "ckpt")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


def test_rpo_adds_the_chosen_per_token_nll(setup, tmp_path):
    """Step 0, every pair in one batch: loss(alpha) = ln 2 + alpha x the mean over pairs of the chosen answer's
    per-token NLL, that NLL computed here from the checkpoint's full logits."""
    import train_data as D
    tok = Tokenizer.from_pretrained(str(setup / "ckpt"))
    m = Llava.from_pretrained(str(setup / "ckpt"))
    rows = D.load_pairs(str(setup / "pairs.jsonl"), tok, m.config.num_image_tokens, train.Config().template, 512,
                         D.Skips())
    n = len(rows)
    images = D.ImageStore(m.config.image_size, pad=m.config.image_aspect_ratio == "pad")
    b = D.collate_pairs(rows, tok.pad_id, images)
    with torch.no_grad():
        logits = m(b["input_ids"][:n], b["pixel_values"][:n], b["attention_mask"][:n])[:, :-1]
    tgt = b["labels"][:n, 1:]
    tok_lp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0] * (tgt != -100)
    nll = (-tok_lp.sum(-1) / (tgt != -100).sum(-1)).mean().item()
    assert nll > 1  # a random checkpoint: a clearly non-zero term
    for alpha in (0.5, 2.0):
        log = run(setup, tmp_path / f"a{alpha}", "--lora_rank=4", "--max_steps=1", f"--batch_size={n}",
                  f"--micro_batch_size={n}", f"--rpo_alpha={alpha}")
        assert log[0]["loss"] == pytest.approx(math.log(2) + alpha * nll, rel=1e-5)
    with pytest.raises(SystemExit, match="rpo_alpha"):
        train.parse_config(["--data=x", "--init_from=y", "--rpo_alpha=-1"])


def test_reference_cache_gives_the_same_run_and_is_reused(setup, tmp_path, capsys):
    """With the projector trained beside the adapters, the live reference keeps its initial copy (adapters off
    alone would leave the moving projector in it): the live and the cached reference give the same run."""
    flags = ["--lora_rank=4", "--train_projector=True"]
    live = run(setup, tmp_path / "live", *flags)
    cache = ["--ref_cache=True", f"--ref_cache_dir={tmp_path}/rc"]
    cached = run(setup, tmp_path / "c1", *flags, *cache)
    assert "cached in" in capsys.readouterr().out and len(list((tmp_path / "rc").glob("refcache-*.pt"))) == 1
    again = run(setup, tmp_path / "c2", *flags, *cache)
    assert "reference log-probs of 24 pairs from" in capsys.readouterr().out  # read back, not recomputed
    for a, b, c in zip(live, cached, again):  # the cache's batches hold other images: the tower's GEMMs round
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-6) and b["loss"] == c["loss"]  # apart by ~1e-6
    run(setup, tmp_path / "c3", *flags, *cache, "--max_len=90", "--max_steps=1")
    assert len(list((tmp_path / "rc").glob("refcache-*.pt"))) == 2  # other truncation: another key


def test_the_stage1_recipes_reference_cache_changes_no_number(setup, tmp_path):
    """recipes/povid_stage1.toml computes the reference once (ref_cache = true): with its one pair per forward the
    cached log-probs are the live ones bit for bit, so the run is the same run."""
    recipe = [f"{ROOT}/recipes/povid_stage1.toml", "--lora_rank=4", "--lr=1e-3", "--warmup_ratio=0"]
    live = run(setup, tmp_path / "live", *recipe, "--ref_cache=False")
    cached = run(setup, tmp_path / "cached", *recipe)
    assert list((tmp_path / "cached").glob("refcache-*.pt")) and not list((tmp_path / "live").glob("refcache-*"))
    assert [r["loss"] for r in live] == [r["loss"] for r in cached] and live[-1]["loss"] != live[0]["loss"]
    a, b = weights(tmp_path / "live"), weights(tmp_path / "cached")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_on_the_cpu_starts_at_ln2_in_full_fine_tuning_and_lora(setup, tmp_path):
    """--dtype=bfloat16 on the CPU runs under CPU autocast; the reference equals the policy at step 0 in both modes
    (full fine-tuning copies the policy, fp32 masters included, instead of loading a bf16 reference)."""
    for flags in (["--lora_rank=0"], ["--lora_rank=4"]):
        log = run(setup, tmp_path / flags[0][2:], "--dtype=bfloat16", "--device=cpu", "--max_steps=1", *flags)
        assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-7), flags


def test_kill_and_resume_is_bit_exact(setup, tmp_path, capsys):
    """Killed after step 2 (and once more while logging step 3: a torn metrics line), resumed: the weights of the
    uninterrupted run, bit for bit; the torn line dropped with a note naming the file; a malformed line before the
    end is an error naming file and line. What the run writes is readable by others (0644 under umask 022)."""
    full = tmp_path / "full"
    run(setup, full, "--max_steps=4", "--lora_rank=4", mode="povid")
    part = tmp_path / "part"
    run(setup, part, "--max_steps=4", "--lora_rank=4", "--stop_after=2", mode="povid")  # "killed" after step 2
    log = (part / "metrics.jsonl").read_text()
    (part / "metrics.jsonl").write_text(log + '{"step": 3, "loss": 0.69')  # killed mid-write of step 3's line
    run(setup, part, "--max_steps=4", "--lora_rank=4", "--resume=True", mode="povid")
    assert f"{part}/metrics.jsonl:3: dropped the last line, torn" in capsys.readouterr().out
    a, b = weights(full), weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in metrics(part)] == [1, 2, 3, 4]
    mask = os.umask(0)
    os.umask(mask)
    for f in [*(part / "ckpt").iterdir(), *(part / "model").iterdir(), part / "metrics.jsonl", part / "config.json"]:
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
    (part / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(SystemExit, match=rf"{part}/metrics.jsonl:2: not a metrics line"):
        run(setup, part, "--max_steps=4", "--lora_rank=4", "--resume=True", mode="povid")


def test_a_run_is_never_mixed_into_another(setup, tmp_path, capsys):
    """An out_dir holding a run: a new run refuses it unless --overwrite=True replaces it; --resume=True refuses
    other settings or other data than the checkpoint's, naming what differs, and says so when there is nothing to
    resume (a job script that always passes it; a mistyped out_dir)."""
    out = tmp_path / "o"
    run(setup, tmp_path / "new", "--max_steps=1", "--lora_rank=4", "--resume=True")
    assert f"--resume=True: no checkpoint in {tmp_path / 'new'}/ckpt, so this run starts at step 0" in \
        capsys.readouterr().out
    run(setup, out, "--max_steps=2", "--stop_after=1", "--lora_rank=4")
    with pytest.raises(SystemExit, match=r"o holds a run \(config.json, metrics.jsonl, ckpt\): --resume=True "
                                         r"continues it, --overwrite=True replaces it"):
        run(setup, out, "--max_steps=2", "--lora_rank=4")
    with pytest.raises(SystemExit, match=r"other settings than the checkpoint's: --lr 0.001 -> 0.002 \(resume"):
        run(setup, out, "--max_steps=2", "--lora_rank=4", "--resume=True", "--lr=2e-3")
    fewer = setup / "fewer.jsonl"  # beside the images its paths name
    fewer.write_text("".join((setup / "pairs.jsonl").read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(SystemExit, match=r"the data: 24 usable samples \(digest \w+\) -> 23 \(\w+\) from .*fewer"):
        train.main(args(setup, out, "--max_steps=2", "--lora_rank=4", "--resume=True") + [f"--data={fewer}"])
    run(setup, out, "--max_steps=2", "--lora_rank=4", "--overwrite=True")  # a fresh run in its place
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert json.loads((out / "ckpt/state.json").read_text())["step"] == 2


def test_interrupted_checkpoint_write_keeps_previous(setup, tmp_path, monkeypatch):
    """A kill inside a checkpoint's write leaves the previous one whole; a finished one is flushed to the disk
    (fsync, model/files.py) before it is swapped in, so a power loss cannot leave a half-written ckpt/ either."""
    import train_state
    synced, real_sync = [], train_state.sync_tree
    monkeypatch.setattr(train_state, "sync_tree", lambda d: synced.append(
        (os.path.basename(d), (out / "ckpt").exists())) or real_sync(d))
    out = tmp_path / "c"
    run(setup, out, "--max_steps=3", "--lora_rank=4", "--stop_after=2")
    assert synced == [("ckpt.tmp", False)]  # the new checkpoint on the disk before ckpt/ names it
    before = weights(out)
    real = train_state.save_file

    def crash(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt("killed half-way through the checkpoint")

    monkeypatch.setattr(train_state, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        run(setup, out, "--max_steps=3", "--lora_rank=4", "--resume=True")
    monkeypatch.setattr(train_state, "save_file", real)
    assert all(torch.equal(before[k], v) for k, v in weights(out).items())  # ckpt/ still the old, whole one
    assert json.loads((out / "ckpt/state.json").read_text())["step"] == 2


def test_bad_input(setup, tmp_path):
    rows = [json.loads(x) for x in (setup / "pairs.jsonl").read_text().splitlines()]
    img = os.path.join(setup, rows[0]["image"])
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({**r, "image": img}) for r in rows[:6]]
    lines.insert(2, "{not json")
    lines.append(json.dumps({**rows[0], "image": str(tmp_path / "nope.png")}))
    lines.append(json.dumps({**rows[0], "image": img, "rejected": rows[0]["chosen"]}))
    lines.append(json.dumps({**rows[0], "image": img, "chosen": "  "}))
    bad.write_text("\n".join(lines) + "\n")
    base = ["--mode=dpo", f"--data={bad}", f"--init_from={setup}/ckpt", f"--out_dir={tmp_path}/o",
            "--max_steps=1", "--batch_size=2", "--micro_batch_size=2"]
    with pytest.raises(SystemExit, match=r"bad.jsonl:3: malformed JSON"):  # one line, no traceback
        train.main(base)
    with pytest.raises(SystemExit, match="unknown config key"):
        train.main(base + ["--lerning_rate=1"])
    import train_data as D
    tok = Tokenizer.from_pretrained(str(setup / "ckpt"))
    skips = D.Skips("skip")
    kept = D.load_pairs(str(bad), tok, 16, "llava_hf", 512, skips)
    assert len(kept) == 7  # the missing image is found by check_images, before any training
    kept = D.check_images(kept, D.image_problems({r["image"] for r in kept}, D.ImageStore(16, pad=True)), skips)
    assert len(kept) == 6
    assert skips.counts["chosen == rejected"] == 1 and skips.counts["empty response"] == 1
    assert skips.counts["missing image"] == 1 and "nope.png" in skips.first["missing image"]
    assert "bad.jsonl:8 (id" in skips.first["missing image"]  # the data file's line, then the image
    assert skips.counts["malformed JSON"] == 1 and "bad.jsonl:3" in skips.first["malformed JSON"]
    skips = D.Skips("skip")
    short = D.load_pairs(str(bad), tok, 16, "llava_hf", 30, skips)  # truncates answers, never the prompt
    assert skips.truncated > 0 and all(len(r["chosen_ids"]) <= 30 for r in short)
    assert all(r["chosen_ids"][:20] == k["chosen_ids"][:20] for r, k in zip(short, kept))
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: prompt longer than max_len"):
        D.load_pairs(str(setup / "pairs.jsonl"), tok, 16, "llava_hf", 10, D.Skips("error"))
    gone = tmp_path / "gone.jsonl"  # every record skipped: an error with the counts, not an empty run
    gone.write_text("".join(json.dumps({**r, "image": "nope.png"}) + "\n" for r in rows))
    with pytest.raises(SystemExit, match=r"gone.jsonl: no usable sample\n  skipped 24 x missing image \(first: "
                                         r".*gone.jsonl:1 \(id"):
        train.main(base[:1] + [f"--data={gone}", "--on_bad_sample=skip"] + base[2:])


def test_nan_loss_stops_with_step_and_ids(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "dpo_loss", lambda pc, pr, rc, rr, *a: (pc * float("nan"), pc, pr))
    with pytest.raises(SystemExit, match=r"non-finite loss at step 0 \(batch ids \['"):
        run(setup, tmp_path / "n", "--lora_rank=4")


def test_epochs_warmup_ratio_and_one_micro_batch_per_rank(setup, tmp_path):
    """24 pairs, 2 epochs of batches of 4 -> 12 steps; warmup 10% -> ceil(1.2) = 2 steps; batch_size 0 -> one
    micro-batch per rank. What ran is what config.json records. (--warmup_steps=10: the default back, since the
    ratio sets the warmup.)"""
    log = run(setup, tmp_path / "e", "--lora_rank=4", "--max_steps=0", "--max_epochs=2", "--batch_size=0",
              "--warmup_ratio=0.1", "--warmup_steps=10", "--log_every=1", "--lr=1e-3", "--min_lr_ratio=0")
    saved = json.loads((tmp_path / "e" / "config.json").read_text())
    assert (saved["max_steps"], saved["warmup_steps"], saved["batch_size"]) == (12, 2, 4)
    assert [r["step"] for r in log] == list(range(1, 13))
    assert log[0]["lr"] == pytest.approx(5e-4) and log[1]["lr"] == pytest.approx(1e-3)  # warmup, then cosine
    assert log[-1]["lr"] < 1e-4


def test_projector_gets_its_own_learning_rate(setup):
    cfg = train.parse_config([f"--data={setup}/pairs.jsonl", f"--init_from={setup}/ckpt", "--lora_rank=4",
                              "--train_projector=True", "--lr=1e-7", "--projector_lr=2e-5"])
    m = Llava.from_pretrained(str(setup / "ckpt"))
    train.make_trainable(cfg, m)
    opt = train.make_optimizer(cfg, m)
    (lora, proj), = [opt.param_groups]
    assert (lora["base_lr"], proj["base_lr"]) == (1e-7, 2e-5)
    assert {id(p) for p in proj["params"]} == {id(p) for p in m.projector.parameters()}
    assert all("lora" in n for n, p in m.named_parameters() if id(p) in {id(q) for q in lora["params"]})


def test_max_len_defaults_to_the_checkpoint_and_too_small_is_named(setup, tmp_path):
    run(setup, tmp_path / "m", "--lora_rank=4", "--max_steps=1")
    mc = LlavaConfig.from_dir(str(setup / "ckpt"))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["max_len"] == mc.text.max_position_embeddings
    with pytest.raises(SystemExit, match=rf"--max_len=10 leaves no room for text after the {mc.num_image_tokens} "):
        run(setup, tmp_path / "n", "--lora_rank=4", "--max_len=10")


def test_image_root_and_vision_tower_reach_the_loaders(setup, tmp_path, monkeypatch):
    """POVID's released JSON names bare COCO files: --image_root resolves them. --vision_tower goes to the
    checkpoint loader (a liuhaotian checkpoint's CLIP dir)."""
    rows = [json.loads(x) for x in (setup / "pairs.jsonl").read_text().splitlines()]
    img_dir = os.path.dirname(os.path.join(setup, rows[0]["image"]))
    povid = [{"id": r["id"], "image": os.path.basename(r["image"]),
              "conversations": [{"from": "human", "value": "<image>\n" + r["prompt"].replace("<image>", "").strip()},
                                {"from": "gpt", "value": r["chosen"]}],
              "rejected_conversations": [{"from": "human", "value": "<image>\n" +
                                          r["prompt"].replace("<image>", "").strip()},
                                         {"from": "gpt", "value": r["rejected"]}]} for r in rows]
    (tmp_path / "povid.json").write_text(json.dumps(povid))
    seen = {}
    real = Llava.from_pretrained

    def spy(path, **kw):
        seen["vision_tower"] = kw.get("vision_tower")
        return real(path, **{k: v for k, v in kw.items() if k != "vision_tower"})
    monkeypatch.setattr(train.Llava, "from_pretrained", spy)
    train.main(["--mode=dpo", f"--data={tmp_path}/povid.json", f"--image_root={img_dir}", f"--init_from={setup}/ckpt",
                f"--out_dir={tmp_path}/o", "--max_steps=1", "--batch_size=4", "--micro_batch_size=4",
                "--lora_rank=4", f"--vision_tower={tmp_path}/clip"])
    assert seen["vision_tower"] == f"{tmp_path}/clip"
    with pytest.raises(SystemExit, match=r"povid.json: item 0 \(id '.*'\): missing image: .*png"):
        train.main(["--mode=dpo", f"--data={tmp_path}/povid.json", f"--init_from={setup}/ckpt",
                    f"--out_dir={tmp_path}/p", "--max_steps=1", "--batch_size=4", "--micro_batch_size=4",
                    "--lora_rank=4"])
