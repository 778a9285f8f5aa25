"""noise.py: closed-form schedule values, shapes, determinism under a generator, clamping."""
import math

import pytest
import torch
from PIL import Image

from noise import NoiseSchedule, noise_image


def test_povid_sigmoid_schedule_closed_form():
    s = NoiseSchedule("sigmoid", steps=1000, beta_start=1e-5, beta_end=5e-3)
    b0 = 1 / (1 + math.exp(6)) * (5e-3 - 1e-5) + 1e-5  # beta at t=0: sigmoid(-6) rescaled
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - b0, abs=1e-12)
    assert s.alphas_cumprod[500].sqrt().item() == pytest.approx(0.863, abs=5e-4)  # POVID's t=500
    expected_last = torch.prod(1 - s.betas).item()
    assert s.alphas_cumprod[-1].item() == pytest.approx(expected_last, rel=1e-12)
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])  # monotone: more steps, more noise


def test_linear_and_cosine():
    lin = NoiseSchedule("linear", steps=1000, beta_start=1e-4, beta_end=0.02)
    assert lin.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)
    assert lin.betas[-1].item() == pytest.approx(0.02)
    cos = NoiseSchedule("cosine", steps=1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    assert cos.alphas_cumprod[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)
    assert cos.alphas_cumprod[-1].item() < 1e-6


def test_add_noise_formula_scalar_and_per_sample_t():
    s = NoiseSchedule("sigmoid")
    x0, eps = torch.rand(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    a = s.alphas_cumprod[500].float()
    assert torch.allclose(s.add_noise(x0, 500, eps), a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)
    t = torch.tensor([0, 500, 999])
    y = s.add_noise(x0, t, eps)
    for i in range(3):
        assert torch.allclose(y[i], s.add_noise(x0[i:i + 1], int(t[i]), eps[i:i + 1])[0], atol=1e-6)
    with pytest.raises(ValueError, match="noise step"):
        s.add_noise(x0, 1000, eps)
    with pytest.raises(ValueError, match="batch"):
        s.add_noise(x0, torch.tensor([1, 2]), eps)
    with pytest.raises(ValueError, match="unknown schedule"):
        NoiseSchedule("quadratic")


def test_generator_determinism_and_fresh_noise():
    s = NoiseSchedule("sigmoid")
    x0 = torch.rand(3, 16, 16)
    a = noise_image(x0, 500, s, torch.Generator().manual_seed(7))
    b = noise_image(x0, 500, s, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(7)
    c, d = noise_image(x0, 500, s, g), noise_image(x0, 500, s, g)
    assert not torch.equal(c, d)  # the next call (next epoch) draws new noise


def test_clamped_to_unit_range_tensor_and_pil():
    s = NoiseSchedule("sigmoid")
    x0 = torch.zeros(3, 32, 32)
    x0[:, :16] = 1.0  # black and white halves: noise pushes both out of [0, 1] without the clamp
    raw = s.add_noise(x0, 999, generator=torch.Generator().manual_seed(0))
    assert raw.min() < 0 and raw.max() > 1
    y = noise_image(x0, 999, s, torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() <= 1 and y.shape == x0.shape
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    out = noise_image(img, 500, s, torch.Generator().manual_seed(0))
    assert isinstance(out, Image.Image) and out.size == (20, 10)
    px = torch.tensor(__import__("numpy").asarray(out), dtype=torch.float32)
    # black image, sigma = sqrt(1 - abar_500) = 0.505: clamped, E[max(0, n)] * 255 = 0.505 * 0.399 * 255 = 51;
    # with POVID's uint8 wrap-around the negative half would land near 255 and the mean near 128
    assert 35 < px.mean() < 70 and (px == 0).float().mean() > 0.4
