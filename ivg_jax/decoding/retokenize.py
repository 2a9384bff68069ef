"""Chunk-level guides whose tokenizer differs from the base's (spec §3; the paper guides Mistral/Mixtral with
Llama-2-vocabulary Tulu-2 models).

Such a guide cannot follow the base token by token. At each chunk boundary the rows' new text is re-tokenised
for it on the host (once per chunk, never per token): the response on its own, appended to the guide's prompt
tokens — the rule training uses (`ivg_jax.training.data.encode_pair`), so the guide scores exactly the tokens
of the response it was trained on. (Tokenising prompt + response as one string would let the response merge
into the prompt's last token, and that boundary token's contribution would be lost or misattributed.) Its KV
caches roll back to the longest common token prefix with what it saw before (slots past it are marked empty)
and continue from there, so each chunk costs the guide only its new tokens. Scores are kept per guide token,
so a rollback drops exactly the contributions it undoes:
- implicit: Σ over the response's guide tokens of w·(log π_tuned − log π_ref);
- explicit: the value head's output before the last guide token, read at that token.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ivg_jax.decoding.prompts import encode
from ivg_jax.errors import InputError
from ivg_jax.model.api import Model
from ivg_jax.model.cache import KVCache
from ivg_jax.model.transformer import extend, prefill


@jax.jit
def _rollback(cache: KVCache, keep: jax.Array) -> KVCache:
    """Empties every slot holding a position >= keep[row] (those tokens are re-fed)."""
    return dataclasses.replace(cache, pos=jnp.where(cache.pos >= keep[:, None], -1, cache.pos), prefix=None)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class HostChunkScorer:
    """Scores the rows of a search with models of another tokenizer, between chunks.

    kind "implicit": models = [tuned, reference] pairs flattened, weights [P, n_pairs];
    kind "explicit": models = [value model], weights unused.
    """

    def __init__(self, kind: str, models: list[Model], weights: np.ndarray, template: str, prompts: list[str],
                 width: int, budget_tokens: int):
        if any(not isinstance(p, str) for p in prompts):
            raise InputError("chunk-level guides with another tokenizer need string prompts (they re-tokenise text)")
        self.kind, self.models, self.width = kind, models, width
        self.weights = np.repeat(np.asarray(weights, np.float32), width, axis=0)  # [R, n_pairs]
        tok = models[0].tokenizer
        self.tokenizer = tok
        ids, mask = encode(tok, prompts, template)
        prompt_ids = [row[m].tolist() for row, m in zip(ids, mask)]
        rows = np.repeat(np.arange(len(prompts)), width)
        self.prompt_ids = [prompt_ids[p] for p in rows]  # rows keep their prompt through every reordering
        self.tokens = [list(prompt_ids[p]) for p in rows]  # guide tokens each row's cache holds
        self.n_prompt = [len(prompt_ids[p]) for p in rows]
        # per row: entry i is the contribution of the token at position i + 1 (prompt positions hold 0)
        self.contrib = [[0.0] * (n - 1) for n in self.n_prompt]
        self.values = np.zeros(len(rows), np.float32)
        self.forward_tokens = sum(map(len, prompt_ids)) * len(models)
        # Re-fed tokens and slots left by rollbacks are not reclaimed: room for the response twice over.
        self.capacity = ids.shape[1] + 2 * budget_tokens + 16
        self.caches = []
        for m in models:
            _, cache = prefill(m.graphdef, m.params, jnp.asarray(ids), jnp.asarray(mask), capacity=self.capacity,
                               last_only=True)
            self.caches.append(cache.take(jnp.asarray(rows)))

    def reorder(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        self.caches = [c.take(jnp.asarray(rows)) for c in self.caches]
        self.tokens = [list(self.tokens[r]) for r in rows]
        self.contrib = [list(self.contrib[r]) for r in rows]
        self.values = self.values[rows]

    def score(self, responses: list[str], ended: np.ndarray | None = None) -> np.ndarray:
        """responses: each row's whole response text so far; ended[row]: the row stopped on EOS, which the guide
        then sees as its own EOS token (scores include EOS, as in-graph). -> [R] chunk scores."""
        new = [p + self.tokenizer(r, add_special_tokens=False)["input_ids"] if r else list(p)
               for p, r in zip(self.prompt_ids, responses)]
        eos = self.tokenizer.eos_token_id
        if ended is not None and eos is not None:
            new = [n + [eos] if e else n for n, e in zip(new, ended)]
        # Roll back to one token before the common prefix: re-feeding it yields the prediction of the next one.
        keep = np.array([max(min(_common_prefix(old, n), len(n)) - 1, 0) for old, n in zip(self.tokens, new)])
        feed = [n[k:] for n, k in zip(new, keep)]
        width = max(map(len, feed))
        if int(self.caches[0].index) + width > self.capacity:
            raise InputError(f"a guide's re-tokenised responses outgrew its cache ({self.capacity} slots); raise "
                             "max_new_tokens headroom or use a longer chunk length")
        ids = np.zeros((len(feed), width), np.int32)
        mask = np.zeros_like(ids, bool)
        for i, f in enumerate(feed):
            ids[i, :len(f)] = f
            mask[i, :len(f)] = True
        self.forward_tokens += int(mask.sum()) * len(self.models)
        outs = []
        for j, m in enumerate(self.models):
            cache = _rollback(self.caches[j], jnp.asarray(keep, jnp.int32))
            out, self.caches[j] = extend(m.graphdef, m.params, jnp.asarray(ids), jnp.asarray(mask), cache)
            outs.append(out)
        scores = np.zeros(len(new), np.float32)
        if self.kind == "implicit":
            lps = [np.asarray(_gathered_logprobs(o, jnp.asarray(np.roll(ids, -1, axis=1)))) for o in outs]
            for i, (n, k) in enumerate(zip(new, keep)):
                fresh = np.zeros(len(n) - 1 - k, np.float32)
                for pair in range(len(self.models) // 2):
                    tuned, ref = lps[2 * pair][i, :len(fresh)], lps[2 * pair + 1][i, :len(fresh)]
                    fresh += self.weights[i, pair] * (tuned - ref)
                self.contrib[i] = self.contrib[i][:k] + fresh.tolist()
                scores[i] = float(np.sum(self.contrib[i][self.n_prompt[i] - 1:]))
        else:
            values = np.asarray(outs[0])
            for i, (n, k) in enumerate(zip(new, keep)):
                j = len(n) - 2 - k  # the output before the last token; j < 0: same text as before, same value
                if len(n) <= self.n_prompt[i]:
                    self.values[i] = 0.0
                elif j >= 0:
                    self.values[i] = values[i, j, n[-1]]
            scores = self.values.copy()
        self.tokens = new
        return scores


@functools.partial(jax.jit)
def _gathered_logprobs(logits: jax.Array, next_ids: jax.Array) -> jax.Array:
    """[R, T, V] outputs and the token that follows each position [R, T] -> its log-probability [R, T]."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(lp, next_ids[..., None], axis=-1)[..., 0]
