"""train.py on a tiny toy world: ln 2 at step 0, learning, accumulation and rank equivalence, exact resume, atomic
checkpoints, bad input."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from toy import world as toyworld
import train
from model import Llava, LlavaConfig, TextConfig, Tokenizer, VisionConfig
from model.clip import init_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 24-scene world, a tiny random checkpoint (llava-hf layout + tokenizer) and rule-injected pairs."""
    d = tmp_path_factory.mktemp("train")
    toyworld.build_world(str(d / "w"), n_train=24, n_test=2, seed=5)
    tok = Tokenizer.from_pretrained(str(d / "w"))
    cfg = LlavaConfig.from_dir(str(d / "w/llava_config"))
    cfg.vision = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=64, patch_size=16)
    t = cfg.text
    cfg.text = TextConfig(vocab_size=t.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, bos_token_id=t.bos_token_id,
                          eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id)
    torch.manual_seed(0)
    m = Llava(cfg)
    init_weights(m, std=0.2)
    m.save_pretrained(str(d / "ckpt"))
    tok.save_pretrained(str(d / "ckpt"))
    subprocess.check_call([sys.executable, "hallucinate.py", "rules", "--input", str(d / "w/train.json"),
                           "--annotations", str(d / "w/annotations.json"), "--vocab", str(d / "w/vocab.json"),
                           "--output", str(d / "pairs.jsonl")], cwd=ROOT, stdout=subprocess.DEVNULL)
    return d


def run(setup, out, *extra, mode="dpo"):
    args = [f"--mode={mode}", f"--data={setup}/pairs.jsonl" if mode != "sft" else f"--data={setup}/w/train.json",
            f"--init_from={setup}/ckpt", f"--out_dir={out}", "--max_steps=3", "--batch_size=4",
            "--micro_batch_size=4", "--lr=1e-3", "--warmup_steps=1", "--log_every=1", *extra]
    train.main(args)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


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


def test_povid_runs_and_starts_at_ln2(setup, tmp_path):
    log = run(setup, tmp_path / "p", "--lora_rank=4", "--noise_t=800", mode="povid")
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # both terms at ln 2: 0.5 ln2 + 0.5 ln2


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
    live = run(setup, tmp_path / "live", "--lora_rank=4")
    cached = run(setup, tmp_path / "c1", "--lora_rank=4", "--ref_cache=True", f"--ref_cache_dir={tmp_path}/rc")
    assert "cached in" in capsys.readouterr().out and len(list((tmp_path / "rc").glob("refcache-*.pt"))) == 1
    again = run(setup, tmp_path / "c2", "--lora_rank=4", "--ref_cache=True", f"--ref_cache_dir={tmp_path}/rc")
    assert "reference log-probs of 24 pairs from" in capsys.readouterr().out  # read back, not recomputed
    for a, b, c in zip(live, cached, again):  # the cache's batches hold other images: the tower's GEMMs round
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-6) and b["loss"] == c["loss"]  # apart by ~1e-6
    run(setup, tmp_path / "c3", "--lora_rank=4", "--ref_cache=True", f"--ref_cache_dir={tmp_path}/rc", "--max_len=90")
    assert len(list((tmp_path / "rc").glob("refcache-*.pt"))) == 2  # other truncation: another key


def test_kill_and_resume_is_bit_exact(setup, tmp_path):
    full = tmp_path / "full"
    run(setup, full, "--max_steps=4", "--lora_rank=4", mode="povid")
    part = tmp_path / "part"
    run(setup, part, "--max_steps=4", "--lora_rank=4", "--stop_after=2", mode="povid")  # "killed" after step 2
    run(setup, part, "--max_steps=4", "--lora_rank=4", "--resume=True", mode="povid")
    a, b = weights(full), weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_checkpoint_write_keeps_previous(setup, tmp_path, monkeypatch):
    out = tmp_path / "c"
    run(setup, out, "--max_steps=2", "--lora_rank=4")
    before = weights(out)
    import train_state
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
    base = [f"--mode=dpo", f"--data={bad}", f"--init_from={setup}/ckpt", f"--out_dir={tmp_path}/o",
            "--max_steps=1", "--batch_size=2", "--micro_batch_size=2"]
    with pytest.raises(ValueError, match=r"bad.jsonl:3: malformed JSON"):
        train.main(base)
    with pytest.raises(SystemExit, match="unknown config key"):
        train.main(base + ["--lerning_rate=1"])
    import train_data as D
    tok = Tokenizer.from_pretrained(str(setup / "ckpt"))
    skips = D.Skips("skip")
    kept = D.load_pairs(str(bad), tok, 16, "llava_hf", 512, skips)
    assert len(kept) == 7  # the missing image is found by check_images, before any training
    kept = D.check_images(kept, D.ImageStore(16, pad=True), skips)
    assert len(kept) == 6
    assert skips.counts["chosen == rejected"] == 1 and skips.counts["empty response"] == 1
    assert skips.counts["missing image"] == 1 and "nope.png" in skips.first["missing image"]
    assert skips.counts["malformed JSON"] == 1 and "bad.jsonl:3" in skips.first["malformed JSON"]
    skips = D.Skips("skip")
    short = D.load_pairs(str(bad), tok, 16, "llava_hf", 30, skips)  # truncates answers, never the prompt
    assert skips.truncated > 0 and all(len(r["chosen_ids"]) <= 30 for r in short)
    assert all(r["chosen_ids"][:20] == k["chosen_ids"][:20] for r, k in zip(short, kept))
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: prompt longer than max_len"):
        D.load_pairs(str(setup / "pairs.jsonl"), tok, 16, "llava_hf", 10, D.Skips("error"))


def test_nan_loss_stops_with_step_and_ids(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "dpo_loss", lambda pc, pr, rc, rr, *a: (pc * float("nan"), pc, pr))
    with pytest.raises(SystemExit, match=r"non-finite loss at step 0 \(batch ids \['"):
        run(setup, tmp_path / "n", "--lora_rank=4")


@pytest.mark.parametrize("fsdp", [False, True])
def test_two_ranks_match_one(setup, tmp_path, fsdp):
    """DDP and FSDP2 (fully_shard per block, gloo on CPU): the same losses and the same exported model as one
    process with the same global batch."""
    one = run(setup, tmp_path / "r1", "--lora_rank=4", "--micro_batch_size=2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={29517 + fsdp}", "train.py", "--mode=dpo", f"--data={setup}/pairs.jsonl",
                          f"--init_from={setup}/ckpt", f"--out_dir={tmp_path}/r2", "--max_steps=3", "--batch_size=4",
                          "--micro_batch_size=2", "--lr=1e-3", "--warmup_steps=1", "--log_every=1", "--lora_rank=4",
                          "--device=cpu", f"--fsdp={fsdp}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    two = [json.loads(x) for x in (tmp_path / "r2/metrics.jsonl").read_text().splitlines()]
    assert len(two) == 3
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    wa = load_file(str(tmp_path / "r1/model/model.safetensors"))
    wb = load_file(str(tmp_path / "r2/model/model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4  # Adam-amplified summation order, as above


# ------------------------------------------------------------------------------------------- the real job's config
def test_recipes_parse_and_hold_povids_values():
    """Every recipe under recipes/ loads as train.py's config (paths from the command line), with the values its
    comments cite; a recipe key train.py does not know is an error naming the file and the key."""
    s1 = train.parse_config([f"{ROOT}/recipes/povid_stage1.toml", "--data=d", "--init_from=c"])
    s2 = train.parse_config([f"{ROOT}/recipes/povid_stage2.toml", "--data=d", "--init_from=c", "--max_steps=2"])
    cd = train.parse_config([f"{ROOT}/recipes/clip_dpo.toml", "--data=d", "--init_from=c"])
    for c in (s1, s2, cd):
        assert (c.lora_rank, c.lora_alpha, c.beta, c.batch_size, c.micro_batch_size) == (128, 256, 0.1, 0, 1)
        assert (c.template, c.image_aspect_ratio, c.warmup_ratio, c.min_lr_ratio) == ("vicuna_v1", "pad", 0.03, 0)
        assert (c.adam_beta2, c.train_projector) == (0.999, False)
    assert (s1.mode, s1.lr, s1.max_epochs, s2.mode, s2.max_epochs, s2.max_steps) == ("dpo", 1e-7, 3, "povid", 1, 2)
    assert (s2.noise_t, s2.noise_tokens_from, s2.povid_weight_injected, s2.povid_weight_noise) == \
        (500, "each", 0.5, 0.5)


def test_recipe_errors_name_the_file_and_key(tmp_path):
    (tmp_path / "r.toml").write_text("lora_rank = 8\nlerning_rate = 1e-5\n")
    with pytest.raises(SystemExit, match=r"r.toml: unknown config key 'lerning_rate'"):
        train.parse_config([str(tmp_path / "r.toml"), "--data=d", "--init_from=c"])
    (tmp_path / "t.toml").write_text('lora_rank = "eight"\n')
    with pytest.raises(SystemExit, match=r"t.toml: lora_rank='eight': expected int"):
        train.parse_config([str(tmp_path / "t.toml"), "--data=d", "--init_from=c"])
    with pytest.raises(SystemExit, match="projector_lr"):
        train.parse_config(["--data=d", "--init_from=c", "--projector_lr=2e-5"])


def test_epochs_warmup_ratio_and_one_micro_batch_per_rank(setup, tmp_path):
    """24 pairs, 2 epochs of batches of 4 -> 12 steps; warmup 10% -> ceil(1.2) = 2 steps; batch_size 0 -> one
    micro-batch per rank. What ran is what config.json records."""
    log = run(setup, tmp_path / "e", "--lora_rank=4", "--max_steps=0", "--max_epochs=2", "--batch_size=0",
              "--warmup_ratio=0.1", "--log_every=1", "--lr=1e-3", "--min_lr_ratio=0")
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
    train.main([f"--mode=dpo", f"--data={tmp_path}/povid.json", f"--image_root={img_dir}", f"--init_from={setup}/ckpt",
                f"--out_dir={tmp_path}/o", "--max_steps=1", "--batch_size=4", "--micro_batch_size=4",
                "--lora_rank=4", f"--vision_tower={tmp_path}/clip"])
    assert seen["vision_tower"] == f"{tmp_path}/clip"
    with pytest.raises(ValueError, match="missing image"):
        train.main([f"--mode=dpo", f"--data={tmp_path}/povid.json", f"--init_from={setup}/ckpt",
                    f"--out_dir={tmp_path}/p", "--max_steps=1", "--batch_size=4", "--micro_batch_size=4",
                    "--lora_rank=4"])
