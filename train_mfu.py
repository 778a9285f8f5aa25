"""Model FLOPs utilisation for train.py's logs (a helper of train.py): the FLOPs of its passes, estimated at log time
from counts that collation already knows, as nanoGPT's estimate_mfu (PaLM's convention: 2 FLOPs per multiply-add,
attention as T x T, no recompute), against the GPU's dense bf16 peak.

    work = train_data.count_work(batches)                      # per step, on the CPU: no device sync
    flops = estimate_flops(model.config, n_layer, n_trained, work, ref_pass=True, noise_passes=0)
    mfu = flops / seconds / (peak_flops(cfg.peak_tflops, "cuda:0") * world)
"""
from __future__ import annotations

import torch

from model import LlavaConfig


def model_flops(mc: LlavaConfig, n_layer_params: int, n_trained_layer_params: int, tokens: int, seq_len: int,
                images: int, scored: int, backward: bool) -> float:
    """Model FLOPs of one pass (nanoGPT/PaLM convention: 2 per multiply-add, attention as T x T, no recompute).
    Forward: 2 N per token through the decoder blocks + 4 L D T attention + the head on scored rows + the vision
    tower on each image. Backward (policy only): the input gradients (= forward) + weight gradients of the trained
    decoder parameters; the frozen CLIP tower gets no backward."""
    t, v = mc.text, mc.vision
    lm = 2 * n_layer_params * tokens + 4 * t.num_hidden_layers * t.hidden_size * seq_len * tokens
    head = 2 * t.hidden_size * t.vocab_size * scored
    p = (v.image_size // v.patch_size) ** 2 + 1  # patches + CLS
    vis_params = (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size) * mc.vision_layers_used
    vis = images * (2 * vis_params * p + 4 * mc.vision_layers_used * v.hidden_size * p * p)
    fwd = lm + head + vis
    return fwd + (lm + head + 2 * n_trained_layer_params * tokens if backward else 0)


def peak_flops(peak_tflops: float, device: str):
    """The device's dense bf16 peak, FLOP/s: --peak_tflops when given, else looked up by GPU name (None: unknown)."""
    if peak_tflops:
        return peak_tflops * 1e12
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, tf in (("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("A100", 312), ("L40S", 362)):  # dense bf16
        if key in name:
            return tf * 1e12
    return None


def estimate_flops(mc: LlavaConfig, n_layer: int, n_trained: int, work: dict, ref_pass: bool,
                   noise_passes: int, shared_features: bool = False) -> float:
    """Model FLOPs of the steps whose micro-batches summed to `work` (train_data.count_work; model_flops is linear
    in each count): the policy's forward and backward, the reference's forward (unless its log-probs are cached) and
    POVID's no-grad passes, which read the chosen half of each batch. Called at log time (as nanoGPT's
    estimate_mfu), so the step itself only adds up counts collation already knows. shared_features:
    the frozen tower ran once per image (Run.with_features): the pairs' images and POVID's noisy ones, once each."""
    tokens = max(work["tokens"], 1.0)
    length = work["tokens_x_len"] / tokens  # the token-weighted mean padded length: exact for the T x T term
    per_pass = 0.0 if shared_features else 1.0

    def passes(share, trained, backward):
        return model_flops(mc, n_layer, trained, share * tokens, length, per_pass * share * work["images"],
                           share * work["targets"], backward)
    tower = 0 if not shared_features else model_flops(mc, 0, 0, 0, length, work["images"] / 2 * (1 + bool(
        noise_passes)), 0, False)  # images counts each pair's image twice (chosen, rejected rows)
    return (passes(1, n_trained, True) + (passes(1, 0, False) if ref_pass else 0)
            + noise_passes * passes(0.5, 0, False) + tower)
