"""Convention checks on their own: RMSNorm casts before the weight; rotate-half RoPE on HF-permuted q/k weights
equals Meta's interleaved complex RoPE on the original weights; CLIP feature layer -2 skips the last block."""
import torch

from model.config import VisionConfig
from model.clip import CLIPVisionTransformer
from model.llama import RMSNorm, rope_cos_sin, rotate_half


def test_rmsnorm_casts_then_weights():
    torch.manual_seed(0)
    norm = RMSNorm(64, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(1 + torch.randn(64))
    x = torch.randn(4, 64).bfloat16()
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    assert torch.equal(norm(x), norm.weight * normed)  # HF/Meta order: cast back, then the weight


def test_rotate_half_on_permuted_weights_is_interleaved_rope():
    torch.manual_seed(0)
    heads, hd, dim, T, theta = 2, 8, 16, 5, 10000.0
    w = torch.randn(heads * hd, dim)  # Meta layout: adjacent pairs rotate together
    x = torch.randn(T, dim)
    # Meta: view adjacent pairs as complex numbers and multiply by e^{i pos theta_j}
    q = (x @ w.t()).view(T, heads, hd // 2, 2)
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
    rot = torch.polar(torch.ones(T, hd // 2), torch.arange(T).float()[:, None] * freqs)  # (T, hd/2)
    meta = torch.view_as_real(torch.view_as_complex(q) * rot[:, None]).reshape(T, heads, hd)
    # HF: rows permuted per head (pairs -> halves), then rotate-half with cat(freqs, freqs)
    w_hf = w.view(heads, hd // 2, 2, dim).transpose(1, 2).reshape(heads * hd, dim)
    qh = (x @ w_hf.t()).view(T, heads, hd).transpose(0, 1)[None]  # (1, H, T, hd)
    cos, sin = rope_cos_sin(torch.arange(T)[None], hd, theta, torch.float32)
    hf = (qh * cos + rotate_half(qh) * sin)[0].transpose(0, 1)  # (T, H, hd)
    # same rotation, the halves layout is the permuted pairs layout
    meta_as_halves = meta.view(T, heads, hd // 2, 2).transpose(2, 3).reshape(T, heads, hd)
    assert torch.allclose(hf, meta_as_halves, atol=1e-5)


def test_feature_layer_minus_two_skips_last_block():
    torch.manual_seed(0)
    c = VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                     image_size=16, patch_size=8)
    tower = CLIPVisionTransformer(c).eval()
    px = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        two = tower(px, num_layers=2)  # hidden_states[-2] of 3 blocks = output of block 2, no post-norm
        x = tower(px, num_layers=0)
        for layer in tower.layers[:2]:
            x = layer(x)
    assert two.shape == (1, 5, 16) and torch.equal(two, x)
    assert not torch.allclose(two, tower(px))
