"""The objectives of spec §5 as pure functions of model outputs (float32 throughout).

Every function takes *aligned* arrays: `out` [B, W, ...] holds the outputs at the positions that predict
`targets` [B, W], and `target_mask` [B, W] marks the real targets (response tokens, EOS included). The train
step aligns them (`steps.aligned_targets`): the output at t predicts token t + 1, and usually only the response
window is projected to the vocabulary at all. B sequences (pairs stacked chosen-first, 2B rows), V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def target_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits [B, W, V], targets [B, W] -> [B, W] log p(target | context)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def sequence_logprobs(logits: jax.Array, targets: jax.Array, target_mask: jax.Array) -> jax.Array:
    """[B] summed log-probs of the targets (everything else masked)."""
    return jnp.sum(jnp.where(target_mask, target_logprobs(logits, targets), 0.0), axis=1)


def sft_loss(logits, targets, target_mask) -> tuple[jax.Array, dict]:
    """Mean next-token NLL over every target token of the batch."""
    row_nll = -sequence_logprobs(logits, targets, target_mask)
    row_tokens = target_mask.sum(1)
    nll = row_nll.sum() / jnp.maximum(row_tokens.sum(), 1)
    return nll, {"loss": nll, "tokens": row_tokens.sum(), "row_nll": row_nll, "row_tokens": row_tokens}


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float,
             label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
    """DPO on summed response log-probs, each [B].

    L = -(1 - ε) log σ(βΔ) - ε log σ(-βΔ), Δ = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l));
    ε > 0 is conservative DPO (labels flipped with probability ε). Implicit rewards β(log π - log π_ref);
    accuracy counts pairs whose chosen reward is strictly higher.
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(margin) - label_smoothing * jax.nn.log_sigmoid(-margin)
    loss = losses.mean()
    return loss, {"loss": loss, "accuracy": (margin > 0).mean(), "margin": margin.mean(),
                  "chosen_reward": chosen_reward.mean(), "rejected_reward": rejected_reward.mean(),
                  "pair_chosen_reward": chosen_reward, "pair_rejected_reward": rejected_reward}


def taken_values(values: jax.Array, targets: jax.Array) -> jax.Array:
    """values [B, W, V] (S_t at the positions before the targets), targets [B, W] -> [B, W] S_{t-1}[y_t]:
    the value of each prefix ending at a target."""
    return jnp.take_along_axis(values.astype(jnp.float32), targets[..., None], axis=-1)[..., 0]


def end_scores(per_token: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, W] -> [B] the entry at each row's last masked column (EOS when the row has one)."""
    last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    return jnp.take_along_axis(per_token, last[:, None], axis=1)[:, 0]


def fudge_loss(values, targets, target_mask, reward) -> tuple[jax.Array, dict]:
    """Token-value regression: per sequence mean_t (S_{t-1}[y_t] - r)² over its response tokens, then the
    batch mean (every sequence weighs the same however long). Also the end score S_{n-1}[y_n]."""
    q = taken_values(values, targets)
    sq = jnp.where(target_mask, (q - reward[:, None]) ** 2, 0.0)
    per_seq = sq.sum(1) / jnp.maximum(target_mask.sum(1), 1)
    loss = per_seq.mean()
    return loss, {"loss": loss, "end_score": end_scores(q, target_mask), "per_sequence": per_seq}


def bradley_terry_loss(score_chosen, score_rejected) -> tuple[jax.Array, dict]:
    """Sequence reward model: -log σ(r_w - r_l), scores [B] read at each sequence's last token."""
    margin = score_chosen - score_rejected
    loss = -jax.nn.log_sigmoid(margin).mean()
    return loss, {"loss": loss, "accuracy": (margin > 0).mean(), "margin": margin.mean()}
