"""model/lora.py: starts at the base model, merges exactly, and the disabled adapters give the base model."""
import copy

import torch

from model import Llava, LlavaConfig, TextConfig, VisionConfig
from model.lora import LoRALinear, adapters_disabled, apply_lora, merge_lora, merge_lora_state


def tiny():
    torch.manual_seed(0)
    cfg = LlavaConfig(vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, image_size=16, patch_size=8),
                      text=TextConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2), image_token_id=39)
    return Llava(cfg).eval()


def test_lora_zero_init_merge_and_disable():
    m = tiny()
    base = copy.deepcopy(m)
    ids = torch.tensor([[1, 39, 39, 39, 39, 5, 6, 7]])
    px = torch.randn(1, 3, 16, 16)
    names = apply_lora(m.language_model, rank=4, alpha=8)
    assert len(names) == 2 * 7  # q k v o gate up down per layer, lm_head untouched
    assert not isinstance(m.lm_head, LoRALinear)
    assert torch.equal(m(ids, px), base(ids, px))  # B = 0: training starts at the base model
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, LoRALinear):
                mod.lora_B.normal_(0, 0.1)
    trained = m(ids, px)
    assert (trained - base(ids, px)).abs().max() > 1e-3
    with adapters_disabled(m):
        assert torch.equal(m(ids, px), base(ids, px))  # the reference is the base model, no copy held
    assert torch.equal(m(ids, px), trained)  # re-enabled after the block
    assert merge_lora(m) == 14
    assert not any(isinstance(x, LoRALinear) for x in m.modules())
    assert torch.allclose(m(ids, px), trained, atol=1e-5)  # merged == unmerged
    assert set(m.state_dict()) == set(base.state_dict())  # plain keys again: saves in the llava-hf layout


def test_merge_state_dict_matches_module_merge_and_bf16_base():
    m = tiny()
    apply_lora(m.language_model, rank=4, alpha=16, targets=("q_proj", "down_proj"))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, LoRALinear):
                mod.lora_B.normal_(0, 0.1)
    merged_sd = merge_lora_state(m.state_dict(), scale=16 / 4)
    ref = copy.deepcopy(m)
    merge_lora(ref)
    assert merged_sd.keys() == ref.state_dict().keys()
    assert all(torch.equal(merged_sd[k], v) for k, v in ref.state_dict().items())
    # a bf16 base keeps fp32 adapters (the trained master weights); under autocast the adapter runs in bf16
    b = tiny().to(torch.bfloat16)
    names = apply_lora(b.language_model, rank=4, alpha=8)
    lora = [x for x in b.modules() if isinstance(x, LoRALinear)]
    assert len(names) == 14 and all(x.lora_A.dtype == torch.float32 and x.base.weight.dtype == torch.bfloat16
                                    for x in lora)
    ids = torch.tensor([[1, 39, 39, 39, 39, 5, 6, 7]])
    px = torch.randn(1, 3, 16, 16)
    out = b(ids, px.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert b(ids, px).dtype == torch.bfloat16
