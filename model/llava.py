"""LLaVA-1.5 (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning"), from scratch; MobileVLM and
MobileVLM V2 (Chu et al. 2023, 2024) are the same network with another projector and a MobileLLaMA (LLaMA) decoder.

    image (B_img, 3, S, S) --CLIP ViT, output of block `vision_feature_layer` (-2), CLS dropped--> (B_img, P, Dv)
                           --projector (model/projector.py): LLaVA-1.5's MLP, N = P = 576;
                             MobileVLM's LDPv2 / LDP, N = 144-->                                  (B_img, N, D)
    input_ids (B, T) holding `image_token_id` N times per image (llava-hf convention)
                           --embed, then the image features replace the image-token rows-->     (B, T, D)
                           --LLaMA decoder, final RMSNorm-->                                      (B, T, D)
                           --lm_head-->                                                           (B, T, V)

`hidden_states()` stops before the LM head: the DPO hot path applies the head itself through the fused
sequence-log-prob kernel (model/logprob.py), so full (B, T, V) logits are never built in training.

Usage:
    m = Llava.from_pretrained("llava-1.5-7b-hf", dtype=torch.bfloat16, device="cuda")
    out = m.generate(input_ids, pixel_values, attention_mask, max_new_tokens=64)
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .clip import CLIPVisionTransformer, init_weights
from .config import LlavaConfig
from .generate import generate as _generate
from .llama import LlamaModel
from .projector import build_projector


class Llava(nn.Module):
    # embed() checks that the image tokens match the images, at the cost of a host sync per call; train.py turns it
    # off (train_data.py checked every sample's image tokens when it encoded it)
    check_image_tokens = True

    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.config = config
        # the whole CLIP tower is held (so checkpoints round-trip), but only the blocks up to the feature layer run
        self.vision_tower = CLIPVisionTransformer(config.vision)
        self.projector = build_projector(config.projector_type, config.vision.hidden_size, config.text.hidden_size,
                                         config.multimodal_projector_bias)
        self.language_model = LlamaModel(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        init_weights(self)  # from-scratch training (toy world); from_pretrained overwrites every tensor

    # ------------------------------------------------------------------ inputs
    def image_features(self, pixel_values):
        """(B_img, 3, S, S) -> (B_img, num_image_tokens, D)."""
        h = self.vision_tower(pixel_values, num_layers=self.config.vision_layers_used)  # (B_img, 1+P, Dv)
        if self.config.vision_feature_select_strategy == "default":
            h = h[:, 1:]  # drop CLS
        return self.projector(h)

    def embed(self, input_ids, pixel_values=None, image_features=None):
        """Token embeddings with image features spliced in at the image-token positions: (B, T, D). image_features
        (B_img, P, D): image_features(pixel_values) computed beforehand, given instead of pixel_values (a trainer
        whose frozen tower serves several passes computes them once)."""
        is_img = input_ids == self.config.image_token_id  # (B, T)
        # the image id may lie outside the vocabulary (liuhaotian: 32000 of 32000), so embed a harmless 0 there
        x = self.language_model.embed_tokens(input_ids.masked_fill(is_img, 0))
        if image_features is not None:
            pixel_values = image_features  # only its image count is read below
        if not self.check_image_tokens:  # the caller vouches for the counts: no host sync
            return x if pixel_values is None else x.masked_scatter(is_img[..., None], (
                self.image_features(pixel_values) if image_features is None else image_features).to(x.dtype))
        n_img_tokens = int(is_img.sum())  # a host sync on an accelerator
        if pixel_values is None:
            if n_img_tokens:
                raise ValueError(f"input_ids hold {n_img_tokens} image tokens (id {self.config.image_token_id}) "
                                 "but no pixel_values were given")
            return x
        if not n_img_tokens:
            raise ValueError(f"pixel_values hold {pixel_values.shape[0]} image(s) but input_ids contain no image "
                             f"token (id {self.config.image_token_id}); put {self.config.num_image_tokens} of them "
                             "per image where the image goes")
        feats = self.image_features(pixel_values) if image_features is None else image_features  # (B_img, P, D)
        if n_img_tokens != feats.shape[0] * feats.shape[1]:
            raise ValueError(
                f"image tokens and image features do not match: input_ids hold {n_img_tokens} image tokens "
                f"(id {self.config.image_token_id}) but {feats.shape[0]} image(s) give {feats.shape[0]} x "
                f"{feats.shape[1]} = {feats.shape[0] * feats.shape[1]} features; each image needs exactly "
                f"{self.config.num_image_tokens} image tokens in the prompt (did the prompt lose its <image>?)")
        return x.masked_scatter(is_img[..., None], feats.to(x.dtype))

    @staticmethod
    def position_ids(attention_mask):
        """Count real tokens only, so left padding does not shift positions: (B, T)."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    # ------------------------------------------------------------------ forward
    def hidden_states(self, input_ids, pixel_values=None, attention_mask=None, image_features=None):
        """Final-normed decoder states (B, T, D); logits = self.lm_head(hidden_states). attention_mask (B, T) is for
        left padding; None = no padding before a real token (unpadded or right-padded): causal attention alone is
        exact at every real position and SDPA can take its flash kernel (pass None for right-padded training).
        image_features: see embed()."""
        x = self.embed(input_ids, pixel_values, image_features)
        if attention_mask is None:
            B, T = input_ids.shape
            return self.language_model(x, None, torch.arange(T, device=x.device).expand(B, T))
        return self.language_model(x, attention_mask, self.position_ids(attention_mask))

    def forward(self, input_ids, pixel_values=None, attention_mask=None):
        return self.lm_head(self.hidden_states(input_ids, pixel_values, attention_mask))  # (B, T, V)

    generate = _generate

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu", vision_tower=None):
        """Load a llava-hf directory, or a liuhaotian one with `vision_tower` = an openai CLIP directory."""
        from .checkpoint import load_llava
        return load_llava(cls, path, dtype=dtype, device=device, vision_tower=vision_tower)

    def save_pretrained(self, path, max_shard_bytes: int = 5 * 1024 ** 3):
        """Write the llava-hf layout (legacy key prefixes, which every transformers version loads)."""
        from .checkpoint import save_llava
        save_llava(self, path, max_shard_bytes=max_shard_bytes)
