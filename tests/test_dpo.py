"""dpo.py: the loss family on a worked example, its invariants, and batch log-probs vs full logits."""
import math

import pytest
import torch
import torch.nn.functional as F

from dpo import batch_logprobs, chosen_nll, dpo_loss, povid_loss


def test_worked_example():
    """pi_c = -10, pi_r = -14, ref_c = -11, ref_r = -12, beta = 0.1.
    Log-ratio gap = (-10 - -14) - (-11 - -12) = 4 - 1 = 3;  z = 0.3.
    sigmoid: -log sigma(0.3) = log(1 + e^-0.3) = log(1.740818) = 0.554355.
    label smoothing 0.1: 0.9 * 0.554355 + 0.1 * log(1 + e^0.3) = 0.498920 + 0.085436 = 0.584355.
    hinge: max(0, 1 - 0.3) = 0.7.   ipo: (3 - 1 / 0.2)^2 = (3 - 5)^2 = 4.
    robust eps 0.1: (0.9 * 0.554355 - 0.1 * 0.854355) / 0.8 = (0.498920 - 0.085436) / 0.8 = 0.516855.
    rewards: chosen 0.1 * (-10 - -11) = 0.1, rejected 0.1 * (-14 - -12) = -0.2."""
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-10.0, -14.0, -11.0, -12.0))
    expect = {("sigmoid", 0.0): 0.554355, ("sigmoid", 0.1): 0.584355, ("hinge", 0.0): 0.7, ("ipo", 0.0): 4.0,
              ("robust", 0.1): 0.516855}
    for (kind, eps), val in expect.items():
        loss, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=kind, label_smoothing=eps)
        assert loss.item() == pytest.approx(val, abs=1e-5), kind
    assert cr.item() == pytest.approx(0.1) and rj.item() == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")


def test_ln2_when_policy_equals_reference():
    lp = torch.randn(8) * 20
    lr_ = torch.randn(8) * 20
    loss, cr, rr = dpo_loss(lp, lr_, lp.clone(), lr_.clone())
    assert torch.allclose(loss, torch.full((8,), math.log(2)))
    assert torch.equal(cr, torch.zeros(8)) and torch.equal(rr, torch.zeros(8))
    total, _, _ = povid_loss(lp, lr_, lr_ - 3, lp, lr_, lr_ - 3)
    assert torch.allclose(total, torch.full((8,), math.log(2)))  # 0.5 ln2 + 0.5 ln2


def test_gradient_raises_chosen_lowers_rejected():
    pc, pr = torch.tensor([-5.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    for kind in ("sigmoid", "hinge", "ipo", "robust"):
        pc.grad = pr.grad = None
        loss, _, _ = dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), loss_type=kind,
                              label_smoothing=0.1 if kind == "robust" else 0.0)
        loss.sum().backward()
        assert pc.grad.item() < 0 < pr.grad.item(), kind  # descent raises chosen, lowers rejected


def test_povid_weights():
    pc, pi, pn = torch.tensor([-3.0]), torch.tensor([-6.0]), torch.tensor([-4.0])
    rc, ri, rn = torch.tensor([-3.5]), torch.tensor([-5.0]), torch.tensor([-4.5])
    l_inj = -F.logsigmoid(torch.tensor(0.1 * ((-3 + 6) - (-3.5 + 5))))
    l_noise = -F.logsigmoid(torch.tensor(0.1 * ((-3 + 4) - (-3.5 + 4.5))))
    total, _, _ = povid_loss(pc, pi, pn, rc, ri, rn, weights=(0.3, 0.7))
    assert total.item() == pytest.approx((0.3 * l_inj + 0.7 * l_noise).item(), abs=1e-6)


def test_chosen_nll_is_per_token():
    """RPO's term: -(summed log-prob) / tokens; an empty answer counts as one token rather than dividing by 0."""
    nll = chosen_nll(torch.tensor([-12.0, -3.0, 0.0]), torch.tensor([4, 1, 0]))
    assert torch.equal(nll, torch.tensor([3.0, 3.0, 0.0]))


def test_batch_logprobs_equal_full_logits():
    from model import Llava, LlavaConfig, TextConfig, VisionConfig
    torch.manual_seed(0)
    cfg = LlavaConfig(vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, image_size=16, patch_size=8),
                      text=TextConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2),
                      image_token_id=49, pad_token_id=0)
    m = Llava(cfg)
    ids = torch.tensor([[1, 49, 49, 49, 49, 7, 8, 9, 10, 2, 0], [1, 49, 49, 49, 49, 7, 11, 12, 2, 0, 0]])
    mask = (torch.arange(11) < torch.tensor([[10], [9]])).long()
    labels = ids.clone()
    labels[:, :6] = -100  # prompt + image
    labels[mask == 0] = -100
    px = torch.randn(2, 3, 16, 16)
    lp = batch_logprobs(m, ids, labels, px, mask)
    logits = m(ids, px, mask)[:, :-1]
    tgt = labels[:, 1:]
    full = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
    assert torch.allclose(lp, (full * (tgt != -100)).sum(-1), atol=1e-5)
