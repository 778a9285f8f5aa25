"""MobileVLM V2 / v1 parity: model/ against an independent reference on tiny random checkpoints in the hub's layout.

Reference = transformers' LlamaForCausalLM (MobileLlamaForCausalLM only overrides input splicing) + CLIPVisionModel
(hidden_states[-2], CLS dropped, as mobilevlm/model/vision_encoder.py) + the projectors written below from the papers'
description with plain tensor ops (no code shared with model/projector.py). Each image's 144 projected tokens replace
its placeholder rows in the embeddings. Three images of different aspect ratios (padded to square as MobileVLM's
process_images does), left-padded rows of different lengths; fp32 logits within 1e-4 and greedy tokens equal.
"""
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model import Llava, load_image
from model_fixtures import (MVLM_SIZE, MVLM_TOKENS, PAD_TOKEN, VOCAB, hf_mobilevlm_parts, mobilevlm_config,
                            projector_state, write_mobilevlm)

P = "model.mm_projector."
IMAGE_TOKEN = VOCAB  # MobileVLM splices at a -200 sentinel; its stand-in id is the vocabulary size, as for liuhaotian


def ln2d(x, w, b):  # LayerNorm over channels of (B, C, H, W)
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, 1e-5).permute(0, 3, 1, 2)


def hardswish(x):
    return x * (x + 3).clamp(0, 6) / 6


def hardsigmoid(x):
    return (x + 3).clamp(0, 6) / 6


def ref_ldpv2(x, p):
    """V2: token-wise Linear-GELU-Linear; 24x24 grid -> 2x2 mean -> 12x12; 3x3 depthwise conv (bias) + residual."""
    h = F.linear(F.gelu(F.linear(x, p[P + "mlp.mlp.0.weight"], p[P + "mlp.mlp.0.bias"])),
                 p[P + "mlp.mlp.2.weight"], p[P + "mlp.mlp.2.bias"])  # (B, 576, D)
    B, _, D = h.shape
    grid = h.transpose(1, 2).reshape(B, D, 24, 24)
    pooled = grid.reshape(B, D, 12, 2, 12, 2).mean((3, 5))  # (B, D, 12, 12)
    y = F.conv2d(pooled, p[P + "peg.peg.0.weight"], p[P + "peg.peg.0.bias"], padding=1, groups=D) + pooled
    return y.reshape(B, D, 144).transpose(1, 2)


def ref_ir(x, p, i, stride):
    """v1: MobileNetV3 inverted residual, expansion 1, SE (ReLU, hard-sigmoid gate), Hardswish, channel LayerNorm."""
    b, D = P + f"model.mb_block.{i}.block.", x.shape[1]
    y = F.conv2d(x, p[b + "0.0.weight"], None, stride, 1, groups=D)
    y = hardswish(ln2d(y, p[b + "0.1.weight"], p[b + "0.1.bias"]))
    s = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), p[b + "1.fc1.weight"], p[b + "1.fc1.bias"]))
    y = y * hardsigmoid(F.conv2d(s, p[b + "1.fc2.weight"], p[b + "1.fc2.bias"]))
    y = ln2d(F.conv2d(y, p[b + "2.0.weight"]), p[b + "2.1.weight"], p[b + "2.1.bias"])
    return x + y if stride == 1 else y


def ref_ldp(x, p):
    h = F.linear(F.gelu(F.linear(x, p[P + "model.mlp.1.weight"], p[P + "model.mlp.1.bias"])),
                 p[P + "model.mlp.3.weight"], p[P + "model.mlp.3.bias"])
    B, _, D = h.shape
    y = ref_ir(ref_ir(h.transpose(1, 2).reshape(B, D, 24, 24), p, 1, 1), p, 2, 2)  # (B, D, 12, 12)
    return y.reshape(B, D, 144).transpose(1, 2)


class Reference:
    def __init__(self, llama, tower, proj, kind):
        self.llama, self.tower, self.proj, self.kind = llama, tower, proj, kind

    def features(self, px):
        feats = self.tower(px, output_hidden_states=True).hidden_states[-2][:, 1:]  # (B, 576, Dv)
        return (ref_ldpv2 if self.kind == "ldpnetv2" else ref_ldp)(feats, self.proj)  # (B, 144, D)

    def __call__(self, ids, px, mask, img=None):
        """Logits (B, T, V) for rows holding 144 IMAGE_TOKEN placeholders each (one image per row)."""
        img = self.features(px) if img is None else img
        is_img = ids == IMAGE_TOKEN
        emb = self.llama.model.embed_tokens(ids.masked_fill(is_img, 0)).clone()
        for r in range(ids.shape[0]):
            emb[r, is_img[r]] = img[r]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.llama(inputs_embeds=emb, attention_mask=mask, position_ids=pos).logits

    def greedy(self, ids, px, n):
        """Row alone (no padding), recomputing the whole sequence each step: the plainest greedy decoder."""
        out, img = [], self.features(px)
        for _ in range(n):
            nxt = self(ids, None, torch.ones_like(ids), img)[:, -1].argmax(-1, keepdim=True)
            out.append(int(nxt))
            ids = torch.cat([ids, nxt], 1)
        return out


def images(size=MVLM_SIZE):
    """Three aspect ratios (wide, tall, square), each padded to square and resized as MobileVLM preprocesses."""
    g = torch.Generator().manual_seed(3)
    pics = []
    for w, h in ((96, 40), (30, 72), (50, 50)):
        arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        pics.append(load_image(Image.fromarray(arr), size, pad=True))
    return torch.stack(pics)  # (3, 3, S, S)


def rows():
    img = [IMAGE_TOKEN] * MVLM_TOKENS
    seqs = [[1, 17, 42] + img + [99, 7, 250, 31, 5], [1] + img + [63, 12], [1, 9] + img + [8, 77, 3, 120]]
    T = max(map(len, seqs))
    ids = torch.tensor([[PAD_TOKEN] * (T - len(r)) + r for r in seqs])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in seqs])
    return ids, mask


SHAPES = {  # (text width, text layers, heads, tower width, tower layers): two depths and widths
    "small": (64, 2, 4, 64, 2),
    "wider": (96, 3, 6, 128, 3),
}


@pytest.fixture(scope="module", params=[("ldpnetv2", "small"), ("ldpnetv2", "wider"), ("ldpnet", "small")],
                ids=["v2-small", "v2-wider", "v1-small"])
def built(request, tmp_path_factory):
    kind, shape = request.param
    tw, tl, heads, vw, vl = SHAPES[shape]
    cfg = mobilevlm_config(tw, tl, heads, vw, projector=kind)
    llama, tower = hf_mobilevlm_parts(cfg, vision_layers=vl)
    proj = projector_state(cfg)
    d = tmp_path_factory.mktemp(f"mvlm_{kind}_{shape}")
    clip = d / "clip" if kind == "ldpnet" else None
    write_mobilevlm(d / "ckpt", cfg, llama, tower, proj, fmt="bin", clip_dir=clip)
    with torch.no_grad():
        ours = Llava.from_pretrained(d / "ckpt", vision_tower=clip)
    return ours, Reference(llama, tower, proj, kind), cfg


@torch.no_grad()
def test_logits_match_reference(built):
    ours, ref, cfg = built
    c = ours.config
    assert c.num_image_tokens == MVLM_TOKENS and c.text.rms_norm_eps == 1e-6 and c.image_token_id == IMAGE_TOKEN
    assert c.text.num_attention_heads == cfg["num_attention_heads"]  # not the stale lit-gpt n_head
    assert (c.vision.hidden_size, c.vision.image_size, c.vision.patch_size) == (cfg["mm_hidden_size"], 48, 2)
    ids, mask = rows()
    px = images()
    a, b = ours(ids, px, mask), ref(ids, px, mask)
    assert (a - b).abs()[mask.bool()].max().item() <= 1e-4
    assert b.abs().max() > 1  # not a vacuous match of near-zero logits


@torch.no_grad()
def test_greedy_generation_matches_reference(built):
    ours, ref, _ = built
    ids, mask = rows()
    px = images()
    new = ours.generate(ids, px, mask, max_new_tokens=6, eos_token_id=-1, pad_token_id=PAD_TOKEN)  # (3, 6)
    for r in range(3):
        alone = ids[r:r + 1, mask[r].bool()]
        assert new[r].tolist() == ref.greedy(alone, px[r:r + 1], 6), f"row {r}"
