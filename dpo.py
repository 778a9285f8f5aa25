"""The DPO loss family, POVID's two-term objective, and summed response log-probs of (prompt, response) batches.

With summed response log-probs pi_c, pi_r (policy) and ref_c, ref_r (reference, frozen), chosen c and rejected r:

    z = beta * [(pi_c - pi_r) - (ref_c - ref_r)]                     the implicit reward margin

    sigmoid  (Rafailov et al. 2023, eq. 7)   L = -log sigma(z)
             with label smoothing eps (conservative DPO, Mitchell 2023):
                                             L = -(1 - eps) log sigma(z) - eps log sigma(-z)
    hinge    (SLiC, Zhao et al. 2023)        L = max(0, 1 - z)
    ipo      (Azar et al. 2023, eq. 17)      L = (z / beta - 1 / (2 beta))^2      (z / beta = the raw log-ratio gap)
    robust   (Chowdhury et al. 2024, eq. 7)  L = [-(1 - eps) log sigma(z) + eps log sigma(-z)] / (1 - 2 eps)
    rewards  r_c = beta (pi_c - ref_c),  r_r = beta (pi_r - ref_r)   (detached; logged)

With --rpo_alpha = alpha > 0 any of them gets the chosen answer's per-token NLL added (RPO, Pang et al. 2024,
"Iterative Reasoning Preference Optimization", the DPO+NLL loss of section 2; TRL's `rpo_alpha`):

    L + alpha * (-pi_c / |c|)                                        |c| = the chosen answer's scored tokens

Plain DPO only widens the gap: it may lower the chosen answer as long as it lowers the rejected one faster, and in
the toy world it does, naming every co-occurring object less whether drawn or not. The NLL term pins the chosen
(ground-truth) answer's likelihood, so what DPO removes has to come from the rejected side.

POVID stage 2 (Zhou et al. 2024; as the released code computes it, tool/dpo_trainer.py): the preferred answer
against two dispreferred ones, each in its own sigmoid, then averaged with weights (0.5 / 0.5 by default):

    L = w_inj * -log sigma(beta [(pi_c - pi_inj) - (ref_c - ref_inj)])         injected hallucination (offline)
      + w_noise * -log sigma(beta [(pi_c - pi_noise) - (ref_c - ref_noise)])   noise-triggered answer (online)

The loss functions need torch alone (copy-paste friendly). `batch_logprobs` runs a model: one forward over
chosen and rejected stacked along the batch, labels shifted by one, summed over response tokens through the
fused kernel on the final-normed hidden states, so full (B, T, V) logits are never built.

    losses, chosen_rewards, rejected_rewards = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    """All inputs (B,) summed log-probs. Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,))."""
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)  # (B,) log-ratio gap
    z = beta * logits
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    elif loss_type == "hinge":
        losses = torch.relu(1 - z)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        if not 0 <= eps < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {eps}")
        losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; use one of {LOSS_TYPES}")
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def chosen_nll(policy_chosen, n_tokens):
    """RPO's term: (B,) summed chosen log-probs and (B,) scored-token counts -> (B,) per-token NLL."""
    return -policy_chosen / n_tokens.clamp(min=1)


def povid_loss(policy_chosen, policy_injected, policy_noise, ref_chosen, ref_injected, ref_noise,
               beta: float = 0.1, weights=(0.5, 0.5)):
    """POVID stage 2: weights = (w_injected, w_noise). Rewards are those of the injected term (as POVID logs)."""
    w_inj, w_noise = weights
    l_inj, rc, rr = dpo_loss(policy_chosen, policy_injected, ref_chosen, ref_injected, beta)
    l_noise, _, _ = dpo_loss(policy_chosen, policy_noise, ref_chosen, ref_noise, beta)
    return w_inj * l_inj + w_noise * l_noise, rc, rr


def shift_labels(labels):
    """labels aligned with input_ids (B, T) -> targets for each position's prediction: position t scores
    labels[t + 1]; the last position scores nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=-100)


def sequence_sums(hidden, weight, labels, rows=None):
    """hidden (B, T, D) final-normed states, weight (V, D), labels (B, T) aligned with the inputs -> (B,). rows:
    the scored positions' flat indices when known on the host (train_data.scored_rows): no host sync."""
    from model.logprob import sequence_logprobs
    B, T, D = hidden.shape
    tok = sequence_logprobs(hidden.reshape(B * T, D), weight, shift_labels(labels).reshape(B * T), rows=rows)
    return tok.view(B, T).sum(-1)


def batch_logprobs(model, input_ids, labels, pixel_values=None, attention_mask=None):
    """Summed log-probs of the labelled (response) tokens, (B,), for a Llava-like model with `hidden_states` and
    `lm_head`. Callers stack chosen and rejected along the batch so both share one forward."""
    h = model.hidden_states(input_ids, pixel_values, attention_mask)  # (B, T, D)
    return sequence_sums(h, model.lm_head.weight, labels)
