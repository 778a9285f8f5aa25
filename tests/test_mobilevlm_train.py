"""POVID and CLIP-DPO on a tiny MobileVLM V2 checkpoint, through the project's own command lines (in process).

The checkpoint: MobileVLM's config.json layout (ldpnetv2, 144 image tokens from a 24 x 24 patch grid), its weights
under the published names, and a SentencePiece tokenizer.model trained here (no tokenizer.json), as the hub ships
MobileVLM. POVID runs both stages in one command (stage 1 DPO with LoRA, merged and exported in MobileVLM's layout,
then stage 2 with the noise-triggered answers made online from that export); CLIP-DPO samples captions with the
MobileVLM policy (hallucinate.py clip-rank), CLIP-scores and filters them, then trains with full fine-tuning. Every
export must be MobileVLM's layout again and load back. (torchrun DDP / FSDP2 on MobileVLM: the rehearsal.)
"""
import io
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import hallucinate as H
import train
from model import CLIPConfig, CLIPModel, Llava, LlavaConfig
from model.clip import init_weights
from model.config import CLIPTextConfig, VisionConfig
from model_fixtures import MVLM_PATCH, MVLM_SIZE, mobilevlm_config
from toy import world as toyworld

spm = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("mvlm_train")
    toyworld.build_world(str(d / "w"), n_train=8, n_test=1, seed=3)
    convs = json.loads((d / "w/train.json").read_text())
    texts = [t["value"].replace("<image>", "") for x in convs for t in x["conversations"]]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts * 4 + ["USER: ASSISTANT:"]), model_writer=buf,
                                   model_type="bpe", vocab_size=400, byte_fallback=True, minloglevel=2,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    cfg = mobilevlm_config(text_width=64, text_layers=2, heads=4, vision_width=64, vocab=sp.get_piece_size())
    config = LlavaConfig.from_dict(cfg)
    config.vision = VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                                 image_size=MVLM_SIZE, patch_size=MVLM_PATCH, projection_dim=768)
    torch.manual_seed(0)
    m = Llava(config)
    init_weights(m, std=0.1)
    m.save_pretrained(str(d / "mvlm"))
    (d / "mvlm/tokenizer.model").write_bytes(buf.getvalue())
    assert H.main(["rules", "--input", str(d / "w/train.json"), "--annotations", str(d / "w/annotations.json"),
                   "--vocab", str(d / "w/vocab.json"), "--output", str(d / "pairs.jsonl")]) in (0, None)
    # CLIP-DPO's scorer: a tiny random CLIP with the toy world's word-level tokenizer
    V = toyworld.build_tokenizer(texts, str(d / "clip/tokenizer.json")).get_vocab_size()
    vis = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       image_size=32, patch_size=8, projection_dim=16)
    CLIPModel(CLIPConfig(vision=vis, text=CLIPTextConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=40, pad_token_id=3, bos_token_id=1, eos_token_id=2, projection_dim=16),
        projection_dim=16)).save_pretrained(str(d / "clip"))
    return d


def metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def check_export(path, base):
    """MobileVLM's layout: its config fields, published key names, the tokenizer.model copied; loads back."""
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "mobilevlm" and cfg["mm_projector_type"] == "ldpnetv2"
    assert cfg["image_seq_length"] == 144 and cfg["mm_vision_tower"].endswith(f"patch{MVLM_PATCH}-{MVLM_SIZE}")
    keys = set(load_file(str(path / "model.safetensors")))
    assert "model.mm_projector.peg.peg.0.weight" in keys and "lm_head.weight" in keys
    assert "model.vision_tower.vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight" in keys
    assert (path / "tokenizer.model").read_bytes() == (base / "tokenizer.model").read_bytes()
    assert not (path / "processor_config.json").exists()
    return Llava.from_pretrained(path)


def test_povid_both_stages_lora(setup, tmp_path):
    out = tmp_path / "povid"
    train.main(["--mode=povid", f"--data={setup}/pairs.jsonl", f"--init_from={setup}/mvlm", f"--out_dir={out}",
                "--povid_stage1_steps=1", "--max_steps=1", "--batch_size=2",
                "--micro_batch_size=2", "--lora_rank=4", "--lr=1e-3", "--warmup_steps=0", "--log_every=1",
                "--noise_t=500"])
    s1, s2 = metrics(out / "stage1"), metrics(out)
    assert s1[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the start
    assert len(s2) == 1 and all(math.isfinite(r["loss"]) for r in s2)
    stage1 = check_export(out / "stage1" / "model", setup / "mvlm")
    final = check_export(out / "model", setup / "mvlm")
    base = Llava.from_pretrained(setup / "mvlm")
    w = "language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(stage1.state_dict()[w], base.state_dict()[w])  # the LoRA delta was merged
    assert not torch.equal(final.state_dict()[w], stage1.state_dict()[w])
    assert torch.equal(final.projector.peg.weight, base.projector.peg.weight)  # LoRA leaves the projector


def test_clip_rank_with_the_mobilevlm_policy_then_full_fine_tuning(setup, tmp_path, capsys):
    pairs = tmp_path / "clip_rank.jsonl"
    assert H.main(["clip-rank", "--checkpoint", str(setup / "mvlm"), "--clip", str(setup / "clip"), "--input",
                   str(setup / "w/train.json"), "--output", str(pairs), "--samples", "3", "--max-new-tokens", "6",
                   "--min-margin", "0", "--max-len-ratio", "10", "--batch-size", "4", "--temperature", "1.0"]) == 0
    rows = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert len(rows) >= 2 and all(r["chosen"] != r["rejected"] for r in rows)
    out = tmp_path / "clip_dpo"
    train.main(["--mode=clip-dpo", f"--data={pairs}", f"--init_from={setup}/mvlm", f"--out_dir={out}",
                "--max_steps=1", "--batch_size=2", "--micro_batch_size=2", "--lora_rank=0", "--lr=1e-4",
                "--warmup_steps=0", "--log_every=1"])
    assert metrics(out)[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    final = check_export(out / "model", setup / "mvlm")
    base = Llava.from_pretrained(setup / "mvlm")
    w = "language_model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(final.state_dict()[w], base.state_dict()[w])  # full fine-tuning moved the decoder


def test_povid_both_stages_on_mobilevlm_v1_with_its_clip_dir(setup, tmp_path):
    """v1 (ldpnet) is read with its openai CLIP directory, as the official loader does, so stage 2 must get that
    directory again for the stage-1 export (which holds the tower, but in v1's layout a loader ignores it)."""
    from model_fixtures import hf_mobilevlm_parts, projector_state, write_mobilevlm
    cfg = mobilevlm_config(text_width=64, text_layers=2, heads=4, vision_width=64, projector="ldpnet",
                           vocab=json.loads((setup / "mvlm/config.json").read_text())["vocab_size"])
    llama, tower = hf_mobilevlm_parts(cfg, vision_layers=2)
    write_mobilevlm(tmp_path / "v1", cfg, llama, tower, projector_state(cfg), clip_dir=tmp_path / "clip")
    (tmp_path / "v1/tokenizer.model").write_bytes((setup / "mvlm/tokenizer.model").read_bytes())
    out = tmp_path / "povid"
    train.main(["--mode=povid", f"--data={setup}/pairs.jsonl", f"--init_from={tmp_path}/v1", f"--out_dir={out}",
                f"--vision_tower={tmp_path}/clip", "--povid_stage1_steps=1", "--max_steps=1", "--batch_size=2",
                "--micro_batch_size=2", "--lora_rank=4", "--lr=1e-3", "--warmup_steps=0", "--log_every=1",
                "--noise_t=500"])
    assert len(metrics(out)) == 1 and math.isfinite(metrics(out)[0]["loss"])
    final = Llava.from_pretrained(out / "model", vision_tower=tmp_path / "clip")
    assert final.config.projector_type == "ldpnet"
