"""CLIP (Radford et al. 2021) written from scratch: the ViT image tower LLaVA-1.5 reads its features from, and the
text tower + projections CLIP-DPO scores image-text pairs with.

Conventions that matter for parity with openai CLIP checkpoints (as in openai/CLIP and transformers' CLIPModel):
  * patch embedding is a bias-free Conv2d with stride = patch; a learned class embedding is prepended and learned
    position embeddings added; then `pre_layrnorm` (sic) runs before the encoder;
  * pre-LN blocks: x + attn(ln1(x)), then x + mlp(ln2(x)); quick_gelu = x * sigmoid(1.702 x);
  * LLaVA reads hidden_states[-2]: the output of the second-to-last block, with no post-norm; `post_layernorm`
    only normalises the pooled CLS token for CLIP's own image embedding;
  * the text tower is causal; it pools the hidden state at the first `eos_token_id` (or, in legacy configs whose
    eos_token_id is 2, at the argmax of input_ids, i.e. the highest token id = openai's end-of-text).
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import CLIPConfig, CLIPTextConfig, VisionConfig


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def activation(name: str):
    if name == "quick_gelu":
        return quick_gelu
    if name == "gelu":
        return F.gelu
    raise ValueError(f"unsupported CLIP hidden_act {name!r}")


class CLIPAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        B, T, D = x.shape
        q, k, v = (p(x).view(B, T, self.heads, D // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale hd^-0.5
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class CLIPMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), activation(act)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPLayer(nn.Module):
    def __init__(self, dim, heads, hidden, act, eps):
        super().__init__()
        self.layer_norm1, self.self_attn = nn.LayerNorm(dim, eps=eps), CLIPAttention(dim, heads)
        self.layer_norm2, self.mlp = nn.LayerNorm(dim, eps=eps), CLIPMLP(dim, hidden, act)

    def forward(self, x, mask=None):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


def _layers(c, n):
    return nn.ModuleList(CLIPLayer(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act,
                                   c.layer_norm_eps) for _ in range(n))


class CLIPVisionTransformer(nn.Module):
    """`num_layers` may be smaller than the config's: LLaVA with feature layer -2 never runs the last block."""

    def __init__(self, c: VisionConfig, num_layers: int | None = None):
        super().__init__()
        self.config = c
        D = c.hidden_size
        # in place: checkpoints are loaded into a model built on the meta device, where an out-of-place op runs
        # through Python (importing torch._dynamo, ~1.5 s); the same values and random stream either way
        self.class_embedding = nn.Parameter(torch.randn(D).mul_(D ** -0.5))
        self.patch_embedding = nn.Conv2d(c.num_channels, D, c.patch_size, stride=c.patch_size, bias=False)
        self.position_embedding = nn.Embedding(c.num_patches + 1, D)
        self.pre_layrnorm = nn.LayerNorm(D, eps=c.layer_norm_eps)
        self.layers = _layers(c, c.num_hidden_layers if num_layers is None else num_layers)
        self.post_layernorm = nn.LayerNorm(D, eps=c.layer_norm_eps) if num_layers is None else None

    def forward(self, pixel_values, num_layers: int | None = None):
        """Return the hidden state after `num_layers` blocks (all by default), (B, 1+P, D), CLS first."""
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, S/p, S/p)
        x = x.flatten(2).transpose(1, 2)  # (B, P, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.position_embedding.weight  # (B, 1+P, D)
        x = self.pre_layrnorm(x)
        for layer in self.layers[: len(self.layers) if num_layers is None else num_layers]:
            x = layer(x)
        return x

    def pooled(self, pixel_values):
        return self.post_layernorm(self.forward(pixel_values)[:, 0])  # (B, D)


class CLIPTextTransformer(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.config = c
        self.token_embedding = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embedding = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.layers = _layers(c, c.num_hidden_layers)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(f"text of {T} tokens exceeds CLIP's {self.config.max_position_embeddings} positions")
        x = self.token_embedding(input_ids) + self.position_embedding.weight[:T]  # (B, T, D)
        allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # causal, as in openai CLIP
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]  # (B, 1, T, T)
            allowed = allowed | torch.eye(T, dtype=torch.bool, device=x.device)  # no fully-masked rows
        for layer in self.layers:
            x = layer(x, allowed)
        x = self.final_layer_norm(x)
        if self.config.eos_token_id == 2:  # legacy configs: end-of-text is the largest id in the sequence
            pos = input_ids.argmax(dim=-1)
        else:
            is_eos = input_ids == self.config.eos_token_id
            if not bool(is_eos.any(dim=-1).all()):
                raise ValueError(f"every CLIP text input must contain eos_token_id={self.config.eos_token_id}")
            pos = is_eos.int().argmax(dim=-1)  # first eos
        return x[torch.arange(B, device=x.device), pos]  # (B, D)


class CLIPModel(nn.Module):
    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.vision_model = CLIPVisionTransformer(config.vision)
        self.text_model = CLIPTextTransformer(config.text)
        self.visual_projection = nn.Linear(config.vision.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        init_weights(self)  # from-scratch training (toy world); from_pretrained overwrites every tensor

    def encode_image(self, pixel_values):
        return self.visual_projection(self.vision_model.pooled(pixel_values))  # (B, P)

    def encode_text(self, input_ids, attention_mask=None):
        return self.text_projection(self.text_model(input_ids, attention_mask))  # (B, P)

    def forward(self, input_ids, pixel_values, attention_mask=None):
        """logits_per_image (B_img, B_txt) = exp(logit_scale) * cosine similarity."""
        img = F.normalize(self.encode_image(pixel_values), dim=-1)
        txt = F.normalize(self.encode_text(input_ids, attention_mask), dim=-1)
        return self.logit_scale.exp() * img @ txt.t()

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu"):
        from .checkpoint import load_clip
        return load_clip(cls, path, dtype, device)

    def save_pretrained(self, path, max_shard_bytes: int = 2 * 1024 ** 3):
        from .checkpoint import save_clip
        save_clip(self, path, max_shard_bytes)


def init_weights(module: nn.Module, std: float = 0.02):
    """Small normal init for a from-scratch model (the toy world); checkpoints overwrite it."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


