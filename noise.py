"""DDPM forward noising q(x_t | x_0) (Ho et al. 2020, eq. 4), used by POVID to corrupt images so the model's
answer under the noisy image exposes its language prior (Zhou et al. 2024, sec. 3.2).

    beta_1..T                   a noise schedule
    alpha_t = 1 - beta_t,  abar_t = prod_{s<=t} alpha_s
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   eps ~ N(0, I)

Schedules: "linear" (Ho et al.: beta linear in [beta_start, beta_end]), "sigmoid" (POVID's repo:
sigmoid(linspace(-6, 6, T)) rescaled to [beta_start, beta_end] = [1e-5, 5e-3]) and "cosine" (Nichol & Dhariwal
2021, eq. 17: abar_t = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), s = 0.008, betas clipped at 0.999).
With POVID's schedule sqrt(abar_500) = 0.863: at t = 500 the image keeps 86% of its signal.

`noise_image` noises the [0, 1] RGB image *before* pad-to-square and CLIP normalisation, as POVID does, and clamps
to [0, 1]. POVID's repo converts the noisy float tensor back to uint8 without clamping, so out-of-range values wrap
around (a dark pixel pushed below 0 becomes bright); that defect is not reproduced here.

Needs torch alone: copy this file anywhere.

    s = NoiseSchedule("sigmoid", steps=1000, beta_start=1e-5, beta_end=5e-3)
    x_t = s.add_noise(x0, t=500, noise=torch.randn_like(x0))
"""
from __future__ import annotations

import math

import torch


class NoiseSchedule:
    def __init__(self, kind: str = "sigmoid", steps: int = 1000, beta_start: float = 1e-5, beta_end: float = 5e-3):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.kind, self.steps = kind, steps
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        elif kind == "sigmoid":
            betas = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
        elif kind == "cosine":
            s = 0.008
            t = torch.arange(steps + 1, dtype=torch.float64) / steps
            f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"unknown schedule {kind!r}: use linear, sigmoid or cosine")
        self.betas = betas  # (T,) float64: products of 1000 terms want the precision
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)  # (T,) abar_t, t = 0..T-1

    def _abar(self, t, like: torch.Tensor):
        """abar_t as a tensor that broadcasts against `like` (scalar t, or per-sample t of shape (B,))."""
        t = torch.as_tensor(t, dtype=torch.long).cpu()  # the schedule lives on the CPU (float64)
        if bool(((t < 0) | (t >= self.steps)).any()):
            raise ValueError(f"noise step t must be in [0, {self.steps - 1}], got {t.tolist()}")
        a = self.alphas_cumprod[t].to(like.device, torch.float32)
        if a.dim() == 1:  # per-sample t: (B,) -> (B, 1, 1, ...)
            if a.shape[0] != like.shape[0]:
                raise ValueError(f"{a.shape[0]} noise steps for a batch of {like.shape[0]}")
            a = a.view(-1, *([1] * (like.dim() - 1)))
        return a

    def add_noise(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; fresh N(0, I) noise from `generator` when none given."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32, device="cpu").to(x0.device)
        a = self._abar(t, x0)
        return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)


def noise_image(image, t: int, schedule: NoiseSchedule, generator: torch.Generator | None = None):
    """Noise a PIL image or a [0, 1] float tensor (3, H, W) / (B, 3, H, W) at step t, clamped to [0, 1].

    Returns the same kind it was given (PIL in -> PIL out, rounded to uint8). Each call draws fresh noise, so
    calling it once per sample per step gives a new corruption every epoch. Apply it before pad-to-square and CLIP
    normalisation, as POVID does. Unlike POVID's repo (float -> uint8 without a clamp, so -0.3 wraps to 180), the
    result is clamped to [0, 1]: a dark pixel pushed below 0 stays black."""
    if isinstance(image, torch.Tensor):
        return schedule.add_noise(image, t, generator=generator).clamp(0.0, 1.0)
    import numpy as np
    from PIL import Image
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    y = schedule.add_noise(x, t, generator=generator).clamp(0.0, 1.0)
    return Image.fromarray((y.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8))
