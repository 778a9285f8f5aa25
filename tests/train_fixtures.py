"""The inputs of train.py's tests (tests/conftest.py's train_world fixture builds them once per session)."""
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(d):
    """A 24-scene world, a tiny random checkpoint (llava-hf layout + tokenizer) and rule-injected pairs under d."""
    from model import Llava, LlavaConfig, TextConfig, Tokenizer, VisionConfig
    from model.clip import init_weights
    from toy import world as toyworld
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


def args(world, out, *extra, mode="dpo"):
    """train.py's arguments for a short run on the world: 3 steps of 4 pairs (samples), lr 1e-3, every step logged."""
    data = f"{world}/w/train.json" if mode == "sft" else f"{world}/pairs.jsonl"
    return [f"--mode={mode}", f"--data={data}", f"--init_from={world}/ckpt", f"--out_dir={out}", "--max_steps=3",
            "--batch_size=4", "--micro_batch_size=4", "--lr=1e-3", "--warmup_steps=1", "--log_every=1", *extra]


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


def run(world, out, *extra, mode="dpo"):
    """train.main in this process -> the run's metrics.jsonl records."""
    import train
    train.main(args(world, out, *extra, mode=mode))
    return metrics(out)
