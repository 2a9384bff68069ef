"""Metrics of a set of generations: mean with a bootstrap interval, distinct-n, fluency as base-model NLL."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ivg_jax.decoding.prompts import encode
from ivg_jax.model.api import Model, forward


def bootstrap_ci(values, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("no values to summarise")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(1)
    tail = (1 - level) / 2 * 100
    return float(values.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def distinct_n(texts, n: int) -> float:
    """Unique word n-grams / all word n-grams over every text (0 when there are none)."""
    grams = [tuple(words[i:i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def continuation_nll(model: Model, prompts, continuations, template: str = "{prompt}",
                     batch_size: int = 16) -> np.ndarray:
    """Per-row mean NLL (nats/token) of each continuation's token ids under `model`, given its templated prompt.

    prompts: strings; continuations: lists of token ids (the decoder's own ids, no text round trip). Rows with no
    continuation tokens give NaN.
    """
    out = np.full(len(prompts), np.nan)
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, min(start + batch_size, len(prompts)))
        ids, mask = encode(model.tokenizer, list(prompts[chunk]), template)
        conts = [list(map(int, c)) for c in continuations[chunk]]
        width = max(1, max(len(c) for c in conts))
        width = -(-width // 8) * 8
        full = np.concatenate([ids, np.zeros((len(conts), width), np.int32)], 1)
        full_mask = np.concatenate([mask, np.zeros((len(conts), width), bool)], 1)
        for i, c in enumerate(conts):
            full[i, ids.shape[1]:ids.shape[1] + len(c)] = c
            full_mask[i, ids.shape[1]:ids.shape[1] + len(c)] = True
        # Only the [B, T] log-probs of the next tokens leave the device (not [B, T, V] logits to the host).
        logp = np.asarray(_next_token_logprobs(forward(model, full, full_mask), jnp.asarray(full)))
        for i, c in enumerate(conts):
            if not c:
                continue
            t0 = ids.shape[1]
            out[start + i] = -logp[i, t0 - 1:t0 - 1 + len(c)].mean()
    return out


@jax.jit
def _next_token_logprobs(logits: jax.Array, ids: jax.Array) -> jax.Array:
    """logits [B, T, V], ids [B, T] -> [B, T] log p(ids[:, t + 1] | ids[:, :t + 1]) (the last column: 0)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    following = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
    return jnp.take_along_axis(logp, following[..., None], axis=-1)[..., 0]
