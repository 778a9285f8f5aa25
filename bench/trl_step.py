"""One DPO step, train.py's (its fused preference loss; and the unfused path) vs Hugging Face TRL's DPOTrainer, on
the same tiny llava-hf checkpoint and the same pairs: the same step-0 log-probs and loss, then step time and peak
memory as ratios.

    .venv/bin/pip install -r requirements-bench.txt -c constraints.txt   # TRL: bench-only, never imported by the project
    .venv/bin/python bench/trl_step.py                                   # CPU: 8 pairs, vocabulary 32000, fp32

The checkpoint: a random LlavaForConditionalGeneration written by transformers' save_pretrained (CLIP tower 2 x 64,
decoder 4 x 256, vocabulary --vocab), read by both sides from the same directory (ours through
model.Llava.from_pretrained). The pairs: [chosen; rejected] right-padded, one random image per pair (the same pixel
values on both sides), a prompt of the image tokens and text, responses of uneven lengths. Both sides get the same
tensors: TRL's DPOTrainer.training_step is called on {input_ids, attention_mask, completion_mask, pixel_values}, so
its data pipeline (the processor, chat template, collator) is not part of the comparison and neither is ours.
Full fine-tuning (vision tower frozen, the reference a frozen copy, as train.py does with --lora_rank=0; TRL's LoRA
needs peft), sigmoid DPO, beta 0.1, AdamW with the same hyper-parameters, loss = the mean over pairs on both sides.

Variants, each in a fresh subprocess (peak memory = peak RSS minus the RSS after imports: model, reference,
optimizer state and activations all count; time = median of --repeats steps after one warm-up):
    trl      trl.DPOTrainer (its tiled fused LM head, `fused_lm_head=True`, on the policy and the reference)
    ours     train.py's step: the reference's log-probs, then train.Net's forward with the loss, which runs
             dpo_fused.fused_preference_loss on the policy (its head gradients formed in the forward)
    unfused  the same with the policy through train.Net -> sequence_sums (model/logprob.py) -> dpo.dpo_loss, the
             path train.py took before the fused loss (and still takes for SFT and the reference)
"""
from __future__ import annotations

import argparse
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
from bench.memory import reset_peak_rss, rss_mb  # noqa: E402

IMAGE, PATCH, IMG_TOKEN, PAD, BOS, EOS = 32, 8, 3, 0, 1, 2
N_IMG = (IMAGE // PATCH) ** 2  # 16 image tokens (CLS dropped)


def build_checkpoint(path: str, vocab: int):
    """A random tiny llava-hf checkpoint written by transformers."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    text = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5,
                       bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=IMAGE, patch_size=PATCH, hidden_act="quick_gelu", projection_dim=64)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMG_TOKEN, pad_token_id=PAD,
                      projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
                      image_seq_length=N_IMG, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(path)


def make_batch(pairs: int, vocab: int):
    """[chosen; rejected] (2P, T) right-padded: BOS, the image tokens, 10 prompt tokens, a response of 24..63 tokens,
    EOS; labels = the response and EOS (-100 elsewhere); pixel values (2P, 3, S, S), the pair's image twice."""
    g = torch.Generator().manual_seed(0)
    seqs, labs = [], []
    prompts = [torch.randint(4, vocab, (10,), generator=g) for _ in range(pairs)]
    for side in range(2):
        for i in range(pairs):
            resp = torch.randint(4, vocab, (24 + (7 * i + 13 * side) % 40,), generator=g).tolist() + [EOS]
            head = [BOS] + [IMG_TOKEN] * N_IMG + prompts[i].tolist()
            seqs.append(head + resp)
            labs.append([-100] * len(head) + resp)
    T = max(map(len, seqs))
    ids = torch.tensor([s + [PAD] * (T - len(s)) for s in seqs])
    labels = torch.tensor([s + [-100] * (T - len(s)) for s in labs])
    mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
    px = torch.randn(pairs, 3, IMAGE, IMAGE, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": torch.cat([px, px]),
            "ids": list(range(pairs))}


# ------------------------------------------------------------------------------------------------ TRL's side
def trl_trainer(ckpt: str, a, out: str):
    import datasets
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer
    # a word-level tokenizer only so that TRL can be constructed (it tokenizes its train_dataset); the step itself
    # gets token ids
    words = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<image>": IMG_TOKEN, "<unk>": 4, "a": 5, "b": 6, "c": 7}
    tk = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    model = LlavaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32)
    ref = LlavaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32)
    model.model.vision_tower.requires_grad_(False)  # as train.py (--train_vision=False)
    args = DPOConfig(output_dir=out, per_device_train_batch_size=a.pairs, learning_rate=a.lr, beta=0.1,
                     loss_type=["sigmoid"], weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=0.0,
                     lr_scheduler_type="constant", report_to="none", use_cpu=True, logging_steps=1,
                     disable_tqdm=True, max_length=None, save_strategy="no")
    data = datasets.Dataset.from_dict({"prompt": ["a"] * 2, "chosen": ["b"] * 2, "rejected": ["c"] * 2})
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer.train() sets before its first training_step
    trainer.model.train()
    return trainer


def trl_inputs(b):
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
            "completion_mask": (b["labels"] != -100).long(), "pixel_values": b["pixel_values"]}


def trl_logps(trainer, b):
    """Per-sequence summed log-probs as TRL's _compute_loss forms them (its fused head on the shifted labels)."""
    x = trl_inputs(b)
    labels = x["input_ids"].masked_fill(x["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = trainer.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                            pixel_values=x["pixel_values"], labels=labels, fused_lm_head=True, use_cache=False)
    return out.log_probs[:, -(x["input_ids"].shape[1] - 1):].sum(1)


# ------------------------------------------------------------------------------------------------ our side
def our_step_fn(ckpt: str, a, fused: bool):
    import train
    from dpo import dpo_loss
    from dpo_fused import pair_groups
    from model import Llava
    model = Llava.from_pretrained(ckpt, dtype=torch.float32)
    ref = Llava.from_pretrained(ckpt, dtype=torch.float32).eval().requires_grad_(False)
    model.vision_tower.requires_grad_(False)
    for m in list(model.vision_tower.layers[model.config.vision_layers_used:]) + [model.vision_tower.post_layernorm]:
        if m is not None:
            m.requires_grad_(False)  # as train.py: blocks past LLaVA's feature layer never run
    model.train()
    net, rnet = train.Net(model), train.Net(ref)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0, betas=(0.9, 0.95))
    P = a.pairs

    def step(b):
        with torch.no_grad():
            rc, rr = rnet("logps", b).view(2, -1)
        if fused:
            loss, pi = net("preference_loss", b, None, pair_groups(P), torch.cat([rc, rr]),
                           train.preference_loss_fn(train.Config(beta=0.1), "dpo"))  # as train.py's pair_loss
            loss = loss / P
            pc = pi[:P]
        else:
            pc, pr = net("logps", b).view(2, -1)
            loss = dpo_loss(pc, pr, rc, rr, 0.1)[0].mean()
            pi = torch.cat([pc, pr]).detach()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), pi

    return step


def run_one(name: str, a):
    b = make_batch(a.pairs, a.vocab)
    if name == "trl":
        import datasets, trl, transformers  # noqa: F401,E401  (imports before the base RSS, as ours below)
    else:
        import train  # noqa: F401
        import dpo_fused  # noqa: F401
    base = rss_mb()
    reset_peak_rss()
    with tempfile.TemporaryDirectory() as out:
        if name == "trl":
            trainer = trl_trainer(a.ckpt, a, out)
            logps0 = trl_logps(trainer, b).tolist()

            def step(_):
                loss = trainer.training_step(trainer.model, trl_inputs(b))
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=True)
                return loss.detach(), None
        else:
            step = our_step_fn(a.ckpt, a, fused=name == "ours")
            logps0 = None
        times, losses = [], []
        for i in range(a.repeats + 1):
            t0 = time.perf_counter()
            loss, pi = step(b)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss))
            if i == 0 and logps0 is None:
                logps0 = pi.tolist()
    return {"variant": name, "step_s": statistics.median(times[1:]), "peak_mb": rss_mb("VmHWM") - base,
            "loss0": losses[0], "logps0": logps0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="trl,ours,unfused")
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a)))
        return
    with tempfile.TemporaryDirectory() as d:
        build_checkpoint(d, a.vocab)
        rows = []
        for name in a.variants.split(","):
            cmd = [sys.executable, __file__, "--one", name, "--ckpt", d, "--pairs", str(a.pairs), "--vocab",
                   str(a.vocab), "--lr", str(a.lr), "--repeats", str(a.repeats)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{name}: failed\n{r.stderr[-3000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    by = {r["variant"]: r for r in rows}
    b = make_batch(a.pairs, a.vocab)
    print(f"DPO step, tiny llava-hf (decoder 4 x 256, vocabulary {a.vocab}), {a.pairs} pairs x "
          f"{b['input_ids'].shape[1]} tokens ({int((b['labels'] != -100).sum())} scored), full fine-tuning, CPU "
          f"{torch.get_num_threads()} threads, median of {a.repeats}; load average {os.getloadavg()[0]:.2f}")
    if "trl" in by:
        t = torch.tensor(by["trl"]["logps0"])
        for name in ("ours", "unfused"):
            if name in by:
                o = torch.tensor(by[name]["logps0"])
                print(f"step 0, {name} vs trl: max |log-prob difference| {(o - t).abs().max().item():.2e} "
                      f"(of |log p| up to {t.abs().max().item():.1f}); loss {by[name]['loss0']:.7f} vs "
                      f"{by['trl']['loss0']:.7f}")
    print("| variant | step s | time vs trl | peak MiB | memory vs trl |\n|---|---|---|---|---|")
    ref = by.get("trl")
    for r in rows:
        rt = f"{r['step_s'] / ref['step_s']:.2f}x" if ref else "-"
        rm = f"{r['peak_mb'] / ref['peak_mb']:.2f}x" if ref else "-"
        print(f"| {r['variant']} | {r['step_s']:.3f} | {rt} | {r['peak_mb']:.0f} | {rm} |")


if __name__ == "__main__":
    main()
