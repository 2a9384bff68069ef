"""Plain batched sampling from one model: prefill once, then one `lax.scan` over decode steps, all jitted.

Finished rows (EOS sampled) are frozen: they emit padding from then on. This is the W=K=1, no-guidance corner
of the IVG engine, kept separate as the baseline the engine is measured against.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ivg_jax.decoding.prompts import encode
from ivg_jax.decoding.sampling import Sampling, row_keys, sample, step_keys
from ivg_jax.decoding.stops import stop_token_ids
from ivg_jax.errors import InputError
from ivg_jax.model.api import Model
from ivg_jax.model.transformer import extend, prefill


@dataclasses.dataclass
class Completion:
    tokens: np.ndarray  # [B, N] generated ids, padding after a row's end
    lengths: np.ndarray  # [B] generated tokens per row, EOS included
    texts: list[str] | None


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "sampling"))
def _sample_loop(graphdef, params, ids, mask, keys, stop_ids, pad_id, max_new_tokens: int, sampling: Sampling):
    logits, cache = prefill(graphdef, params, ids, mask, capacity=ids.shape[1] + max_new_tokens, last_only=True)

    def body(carry, t):
        logits, cache, done = carry
        token = sample(step_keys(keys, t), logits, sampling)
        token = jnp.where(done, pad_id, token)
        finished = done | jnp.isin(token, stop_ids)
        out, cache = extend(graphdef, params, token[:, None], ~done[:, None], cache)
        return (out[:, 0], cache, finished), (token, ~done)

    done = jnp.zeros(ids.shape[0], bool)
    _, (tokens, alive) = jax.lax.scan(body, (logits, cache, done), jnp.arange(max_new_tokens))
    return tokens.T, alive.T.sum(axis=1)


def complete(model: Model, prompts, max_new_tokens: int = 32, sampling: Sampling | None = None,
             seed: int = 0, template: str = "{prompt}", stop_ids=None) -> Completion:
    """Completes a batch of prompts (strings or token-id lists). Greedy by default."""
    sampling = sampling or Sampling(0.0)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens} must be >= 1")
    cfg = model.config
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    ids, mask = encode(model.tokenizer, prompts, template, pad_id=pad_id, vocab_size=cfg.vocab_size)
    if ids.shape[1] + max_new_tokens > cfg.max_positions:
        raise InputError(f"prompts ({ids.shape[1]} tokens after bucketing) + {max_new_tokens} new tokens exceed the "
                         f"model's context of {cfg.max_positions}; shorten the prompts or max_new_tokens")
    stops = stop_token_ids(cfg.eos_token_ids if stop_ids is None else stop_ids,
                           None if stop_ids is None else cfg.vocab_size)
    tokens, lengths = _sample_loop(model.graphdef, model.params, jnp.asarray(ids), jnp.asarray(mask),
                                   row_keys(seed, ids.shape[0]), jnp.asarray(stops), jnp.int32(pad_id),
                                   max_new_tokens, sampling)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    texts = None
    if model.tokenizer is not None:
        texts = [model.tokenizer.decode(t[:n], skip_special_tokens=True) for t, n in zip(tokens, lengths)]
    return Completion(tokens, lengths, texts)
