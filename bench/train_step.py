"""DPO training-step throughput and peak memory: the step train.py runs vs the same step written naively.

    .venv/bin/python bench/train_step.py                        # CPU: the toy world's LLaVA, LoRA r16, 8 pairs
    .venv/bin/python bench/train_step.py --vocab 32000          # the same decoder with LLaVA-1.5's vocabulary size
    .venv/bin/python bench/train_step.py --device cuda --preset 7b   # GPU: LLaVA-1.5-7B shape, random init, bf16,
                                                                     # LoRA r128, 1024 tokens/sequence, MFU

One DPO step = policy forward+backward on [chosen; rejected] (one batch of 2B sequences), reference forward under
no_grad, sigmoid DPO loss, AdamW step. Variants (each in a fresh subprocess, so its peak memory is its own):

    ours          train.py's step: the reference = the same network with its LoRA adapters switched off (no second
                  copy), its log-probs by model/logprob.py on the scored rows only (no (2B, T, V) logits); then the
                  policy's whole DPO loss by dpo_fused.py, its head gradients formed in the forward
    naive         Llava.forward -> full fp32 logits -> log_softmax -> gather (the usual DPO trainer code), reference =
                  a separate frozen copy of the base model
    fused+copy    ours' log-probs and loss with naive's reference copy } the two halves of the gain,
    logits+off    naive's log-probs with ours' adapter-off reference }  measured apart

Memory: CPU = peak RSS minus the RSS after imports (model, optimizer state and activations all count); CUDA =
torch.cuda.max_memory_allocated. Time = median of --repeats steps after one warm-up. MFU (CUDA) counts model FLOPs
as train.py logs them (policy forward+backward + reference forward; recomputation under checkpointing not counted).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402
from bench.memory import reset_peak_rss, rss_mb  # noqa: E402
from dpo import dpo_loss, shift_labels  # noqa: E402
from dpo_fused import pair_groups  # noqa: E402
from model import Llava, LlavaConfig, TextConfig, VisionConfig  # noqa: E402
from model.lora import adapters_disabled, apply_lora  # noqa: E402
from train_mfu import model_flops, peak_flops  # noqa: E402

VARIANTS = ["ours", "naive", "fused+copy", "logits+off"]


def toy_config(vocab: int | None) -> LlavaConfig:
    """The toy world's LLaVA config exactly as toy/world.py writes it (its tokenizer built from the grammar)."""
    from toy import world as toyworld
    with tempfile.TemporaryDirectory() as d:
        tk = toyworld.build_tokenizer(toyworld.grammar_words(), os.path.join(d, "tokenizer.json"))
        toyworld.configs(d, tk)
        cfg = LlavaConfig.from_dir(os.path.join(d, "llava_config"))
    if vocab:
        cfg.text.vocab_size = vocab
    return cfg


def llava7b_config() -> LlavaConfig:
    """LLaVA-1.5-7B: CLIP ViT-L/14-336 tower, Vicuna-7B decoder, vocabulary 32064 (llava-hf's padded size)."""
    vision = VisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          image_size=336, patch_size=14, projection_dim=768)
    text = TextConfig(vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=32001)
    return LlavaConfig(vision=vision, text=text, image_token_id=32000, pad_token_id=32001)


def make_batch(cfg: LlavaConfig, pairs: int, seq: int, response: int, device):
    """Random [chosen; rejected] (2B, seq): image tokens, prompt, then `response` scored tokens (labels)."""
    g = torch.Generator().manual_seed(0)
    n_img, V = cfg.num_image_tokens, cfg.text.vocab_size
    assert seq > n_img + response, f"--seq {seq} must exceed image tokens {n_img} + response {response}"
    ids = torch.randint(3, min(V, cfg.image_token_id), (2 * pairs, seq), generator=g)
    ids[:, 0] = cfg.text.bos_token_id
    ids[:, 1:1 + n_img] = cfg.image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -response:] = ids[:, -response:]
    px = torch.randn(pairs, 3, cfg.image_size, cfg.image_size, generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
            "pixel_values": torch.cat([px, px]).to(device), "ids": list(range(pairs))}


def naive_pair_logps(model, b):
    """What a DPO trainer usually writes: full logits, fp32 log_softmax, gather, mask, sum."""
    B = len(b["ids"])
    logits = model(b["input_ids"], b["pixel_values"], b["attention_mask"])  # (2B, T, V)
    tgt = shift_labels(b["labels"])  # (2B, T)
    lp = torch.gather(logits.float().log_softmax(-1), 2, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (2B, T)
    lp = (lp * (tgt != -100)).sum(-1)
    return lp[:B], lp[B:]


def run_one(name: str, a):
    dev = a.device
    cuda = dev == "cuda"
    cfg = llava7b_config() if a.preset == "7b" else toy_config(a.vocab)
    b = make_batch(cfg, a.pairs, a.seq, a.response, dev)
    warm = torch.nn.Parameter(torch.zeros(4, device=dev))  # the first backward and AdamW step import modules
    (warm * 2).sum().backward()                              # (~150 MiB RSS): not the step's memory
    torch.optim.AdamW([warm], fused=cuda).step()
    base = torch.cuda.memory_allocated() if cuda else rss_mb()
    if not cuda:
        reset_peak_rss()
    frozen = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device(dev):
        model = Llava(cfg).to(frozen)
    fused, off = name in ("ours", "fused+copy"), name in ("ours", "logits+off")
    ref = None if off else copy.deepcopy(model).eval().requires_grad_(False)
    model.requires_grad_(False)
    apply_lora(model.language_model, a.rank, 2 * a.rank)
    model.language_model.gradient_checkpointing = a.grad_checkpointing
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=cuda)
    net = train.Net(model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def logps(m):
        if fused:
            lp = (train.Net(m) if m is not model else net)("logps", b)  # (2P,)
            return lp[:a.pairs], lp[a.pairs:]
        return naive_pair_logps(m, b)

    def step():
        with autocast:
            with torch.no_grad():  # the reference first: the fused loss takes its log-probs as an input
                if off:
                    with adapters_disabled(model):
                        rc, rr = logps(model)
                else:
                    rc, rr = logps(ref)
            if fused:  # train.py's policy pass: the whole DPO loss, its head gradients formed in the forward
                P = len(b["ids"])
                loss, _ = net("preference_loss", b, None, pair_groups(P, dev), torch.cat([rc, rr]),
                              train.preference_loss_fn(train.Config(beta=0.1), "dpo"))
                loss = loss / P
            else:
                pc, pr = logps(model)
                loss = dpo_loss(pc, pr, rc, rr, 0.1)[0].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up: optimizer state allocated, kernels chosen
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = rss_mb("VmHWM") - base
    t = statistics.median(times)
    n_layer = sum(p.numel() for n, p in model.language_model.layers.named_parameters() if ".lora_" not in n)
    n_lora = sum(p.numel() for p in params)
    tokens, scored = 2 * a.pairs * a.seq, 2 * a.pairs * a.response
    flops = (model_flops(cfg, n_layer + n_lora, n_lora, tokens, a.seq, 2 * a.pairs, scored, backward=True)
             + model_flops(cfg, n_layer, 0, tokens, a.seq, 2 * a.pairs, scored, backward=False))
    peak = peak_flops(a.peak_tflops, dev)
    return {"variant": name, "step_s": t, "pairs_per_s": a.pairs / t, "tokens_per_s": tokens / t, "peak_mb": peak,
            "mfu": flops / t / peak if peak else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default=None, help="toy (CPU default) | 7b (CUDA default)")
    ap.add_argument("--vocab", type=int, default=None, help="toy preset: override the vocabulary size")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per step (CPU 8, CUDA 1)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (toy 128, 7b 1024)")
    ap.add_argument("--response", type=int, default=None, help="scored tokens per sequence (toy 48, 7b 256)")
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank (toy 16, 7b 128)")
    ap.add_argument("--grad_checkpointing", type=int, default=None, help="0/1 (default: on for 7b)")
    ap.add_argument("--peak_tflops", type=float, default=0.0, help="for MFU; 0 = look the GPU up")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU torch threads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--loop", action="store_true", help="train.py's own loop, DPO and POVID (bench/train_loop.py); "
                    "presets toy | 7b-2l | 7b")
    ap.add_argument("--before", default=None, help="--loop: also run this commit's tree, side by side")
    ap.add_argument("--rounds", type=int, default=1, help="--loop: runs of each variant, interleaved (the median)")
    ap.add_argument("--modes", default="dpo,povid", help="--loop: train.py modes to time")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cuda = a.device == "cuda"
    a.preset = a.preset or ("7b" if cuda else "toy")
    big = a.preset == "7b"
    a.pairs = a.pairs or (1 if cuda else 8)
    a.seq = a.seq or (1024 if big else 128)
    a.response = a.response or (256 if big else 48)
    a.rank = a.rank or (128 if big else 16)
    a.grad_checkpointing = bool(big if a.grad_checkpointing is None else a.grad_checkpointing)
    if a.loop:
        from bench.train_loop import main as loop_main
        loop_main(a)
        return
    if a.one:
        torch.set_num_threads(a.threads)
        print(json.dumps(run_one(a.one, a)))
        return
    rows = []
    for name in a.variants.split(","):
        cmd = [sys.executable, __file__, "--one", name] + [x for k, v in vars(a).items() if k not in ("one", "variants")
                                                           and v is not None for x in (f"--{k}", str(int(v) if
                                                           isinstance(v, bool) else v))]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = next((r for r in rows if r["variant"] == "naive"), None)
    what = (f"{a.preset} preset{' V=%d' % a.vocab if a.vocab else ''}, {a.pairs} pair(s) x {a.seq} tokens "
            f"({a.response} scored), LoRA r{a.rank}, {a.device}"
            f"{'' if cuda else ', %d thread(s)' % a.threads}"
            f"{', grad checkpointing' if a.grad_checkpointing else ''}")
    print(f"DPO step: {what}")
    print("| variant | step s | pairs/s | tokens/s | peak MiB | time vs naive | memory vs naive |"
          + (" MFU |" if cuda else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if cuda else ""))
    for r in rows:
        rt = f"{r['step_s'] / ref['step_s']:.2f}x" if ref else "-"
        rm = f"{r['peak_mb'] / ref['peak_mb']:.2f}x" if ref else "-"
        mfu = f" {100 * r['mfu']:.1f}% |" if cuda and r["mfu"] else (" - |" if cuda else "")
        print(f"| {r['variant']} | {r['step_s']:.3f} | {r['pairs_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
              f"{r['peak_mb']:.0f} | {rt} | {rm} |{mfu}")


if __name__ == "__main__":
    main()
