"""The objectives of spec §5 as pure functions of model outputs (float32 throughout).

Shapes: B sequences (pairs are stacked chosen-first, 2B rows), T time, V vocab. A `loss_mask` [B, T] marks the
response tokens; token t is predicted by the output at t - 1, so masks are read one column to the right of the
outputs that score them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """logits [B, T, V], tokens [B, T] -> [B, T] log p(tokens[t] | < t); column 0 (no context) is 0."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    taken = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.pad(taken, ((0, 0), (1, 0)))


def sequence_logprobs(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """[B] summed log-probs of the response tokens (prompt and padding masked)."""
    return jnp.sum(jnp.where(loss_mask, token_logprobs(logits, tokens), 0.0), axis=1)


def sft_loss(logits, tokens, loss_mask) -> tuple[jax.Array, dict]:
    """Mean next-token NLL over every target token of the batch."""
    row_nll = -jnp.sum(jnp.where(loss_mask, token_logprobs(logits, tokens), 0.0), axis=1)
    row_tokens = loss_mask.sum(1)
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


def taken_values(values: jax.Array, tokens: jax.Array) -> jax.Array:
    """values [B, T, V] (S_t), tokens [B, T] -> [B, T] S_{t-1}[y_t]: the value of each prefix ending at t."""
    taken = jnp.take_along_axis(values[:, :-1].astype(jnp.float32), tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.pad(taken, ((0, 0), (1, 0)))


def end_scores(per_token: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """[B, T] -> [B] the entry at each row's last response token (EOS when the row has one)."""
    last = loss_mask.shape[1] - 1 - jnp.argmax(loss_mask[:, ::-1], axis=1)
    return jnp.take_along_axis(per_token, last[:, None], axis=1)[:, 0]


def fudge_loss(values, tokens, loss_mask, reward) -> tuple[jax.Array, dict]:
    """Token-value regression: per sequence mean_t (S_{t-1}[y_t] - r)² over its response tokens, then the
    batch mean (every sequence weighs the same however long). Also the end score S_{n-1}[y_n]."""
    q = taken_values(values, tokens)
    sq = jnp.where(loss_mask, (q - reward[:, None]) ** 2, 0.0)
    per_seq = sq.sum(1) / jnp.maximum(loss_mask.sum(1), 1)
    loss = per_seq.mean()
    return loss, {"loss": loss, "end_score": end_scores(q, loss_mask), "per_sequence": per_seq}


def bradley_terry_loss(score_chosen, score_rejected) -> tuple[jax.Array, dict]:
    """Sequence reward model: -log σ(r_w - r_l), scores [B] read at each sequence's last token."""
    margin = score_chosen - score_rejected
    loss = -jax.nn.log_sigmoid(margin).mean()
    return loss, {"loss": loss, "accuracy": (margin > 0).mean(), "margin": margin.mean()}
