"""The vision-language projectors: CLIP patch features (B_img, P, Dv) -> image tokens for the LLM (B_img, N, D).

  mlp2x_gelu  LLaVA-1.5 (Liu et al. 2023): linear_1 -> exact GELU -> linear_2, token-wise; N = P (576 at 336 px).
  ldpnetv2    MobileVLM V2's LDPv2 (Chu et al. 2024, arXiv 2402.03766, Sec. 3.2), N = 144:
                x = linear_2(GELU(linear_1(x)))                      token-wise, before any pooling    (B, P, D)
                x = AdaptiveAvgPool2d(12 x 12) over the g x g grid   g = sqrt(P) = 24: a 2 x 2 mean    (B, 144, D)
                x = DWConv3x3(x) + x                                 depthwise, with bias: the PEG     (B, 144, D)
  ldpnet      MobileVLM v1's LDP (Chu et al. 2023, arXiv 2312.16886, Sec. 3.4), N = ceil(g / 2)^2 = 144:
                x = linear_2(GELU(linear_1(x)))                                                        (B, P, D)
                x = x + IR(x, stride 1);  x = IR(x, stride 2)        on the (B, D, g, g) grid          (B, 144, D)
              IR = MobileNetV3's inverted residual with expansion 1: depthwise 3x3 conv (no bias) -> channel
              LayerNorm -> Hardswish -> squeeze-excite (mean over the grid, 1x1 conv to D_se, ReLU, 1x1 conv back,
              Hardsigmoid gate) -> pointwise 1x1 conv (no bias) -> channel LayerNorm.

The official code (Meituan-AutoML/MobileVLM, mobilevlm/model/vision_projector.py) builds these from timm and
torchvision modules; here they are plain torch, and model/checkpoint.py maps the published key names
(`model.mm_projector.mlp.mlp.{0,2}`, `model.mm_projector.peg.peg.0`, `model.mm_projector.model.mb_block.{1,2}...`)
onto the names below. Grid order is row-major (token t -> row t // g, column t % g), as the official reshape.
Tests: tests/test_mobilevlm.py (against a projector written separately from the paper's description).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import LDP_V2_GRID, PROJECTOR_TYPES, grid_side

def squeeze_channels(d: int) -> int:
    """torchvision's _make_divisible(d // 4, 8): the squeeze-excite width of MobileNetV3 (512 for D = 2048)."""
    v = d // 4
    out = max(8, int(v + 4) // 8 * 8)
    return out + 8 if out < 0.9 * v else out


class MLPProjector(nn.Module):
    """LLaVA-1.5's mlp2x_gelu (bias optional: llava-hf's multimodal_projector_bias)."""

    def __init__(self, dv: int, d: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(dv, d, bias=bias)
        self.linear_2 = nn.Linear(d, d, bias=bias)

    def forward(self, x):  # (B, P, Dv) -> (B, P, D)
        return self.linear_2(F.gelu(self.linear_1(x)))  # exact (erf) GELU, as LLaVA's nn.GELU()


def to_grid(x):
    """(B, g*g, D) row-major tokens -> (B, D, g, g)."""
    B, P, D = x.shape
    g = grid_side(P)
    return x.transpose(1, 2).reshape(B, D, g, g)


def from_grid(x):
    """(B, D, h, w) -> (B, h*w, D), row-major."""
    return x.flatten(2).transpose(1, 2)


class LDPv2Projector(MLPProjector):
    """MobileVLM V2: the token-wise MLP, a 12 x 12 average pool, then the PEG (depthwise conv + residual)."""

    def __init__(self, dv: int, d: int):
        super().__init__(dv, d)
        self.peg = nn.Conv2d(d, d, 3, padding=1, groups=d, bias=True)

    def forward(self, x):  # (B, P, Dv) -> (B, 144, D)
        x = F.adaptive_avg_pool2d(to_grid(super().forward(x)), LDP_V2_GRID)  # (B, D, 12, 12)
        return from_grid(self.peg(x) + x)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (timm's LayerNormAct2d without an activation)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class InvertedResidual(nn.Module):
    """MobileNetV3's block at expansion 1 with squeeze-excite and Hardswish (see the module docstring)."""

    def __init__(self, d: int, stride: int, eps: float = 1e-5):
        super().__init__()
        self.stride = stride
        self.dw = nn.Conv2d(d, d, 3, stride=stride, padding=1, groups=d, bias=False)
        self.dw_norm = ChannelLayerNorm(d, eps=eps)
        s = squeeze_channels(d)
        self.se_fc1 = nn.Conv2d(d, s, 1)
        self.se_fc2 = nn.Conv2d(s, d, 1)
        self.pw = nn.Conv2d(d, d, 1, bias=False)
        self.pw_norm = ChannelLayerNorm(d, eps=eps)

    def forward(self, x):  # (B, D, h, w) -> (B, D, h', w')
        y = F.hardswish(self.dw_norm(self.dw(x)))
        gate = F.hardsigmoid(self.se_fc2(F.relu(self.se_fc1(y.mean((2, 3), keepdim=True)))))  # (B, D, 1, 1)
        y = self.pw_norm(self.pw(y * gate))
        return x + y if self.stride == 1 else y  # torchvision: residual only when the shape is kept


class LDPProjector(MLPProjector):
    """MobileVLM v1: the token-wise MLP, then two inverted residual blocks (stride 1, then 2)."""

    def __init__(self, dv: int, d: int):
        super().__init__(dv, d)
        self.block_1 = InvertedResidual(d, stride=1)
        self.block_2 = InvertedResidual(d, stride=2)

    def forward(self, x):  # (B, P, Dv) -> (B, ceil(g/2)^2, D)
        return from_grid(self.block_2(self.block_1(to_grid(super().forward(x)))))


def build_projector(projector_type: str, dv: int, d: int, bias: bool = True) -> nn.Module:
    if projector_type == "mlp2x_gelu":
        return MLPProjector(dv, d, bias)
    if projector_type == "ldpnetv2":
        return LDPv2Projector(dv, d)
    if projector_type == "ldpnet":
        return LDPProjector(dv, d)
    raise ValueError(f"unknown projector type {projector_type!r}; known: {', '.join(PROJECTOR_TYPES)}")
