"""A plain re-implementation of guided decoding and chunk-level beam search for one prompt, written without
caches, broadcasting, scans or in-graph selection: every step re-runs every model over prompt + response
(`ivg_jax.forward`, itself checked against transformers). Same keys and the same one-draw sampler as the engine
(`categorical`, checked on its own in test_sampling.py), so same samples."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import ivg_jax
from ivg_jax.decoding.sampling import categorical, filter_logits


def last_outputs(model, prompt: list[int], responses: list[list[int]], width: int) -> np.ndarray:
    """[rows, V] the model's output after prompt + each response (one padded full forward)."""
    ids = np.zeros((len(responses), width), np.int32)
    mask = np.zeros_like(ids, bool)
    for i, r in enumerate(responses):
        seq = prompt + r
        ids[i, :len(seq)] = seq
        mask[i, :len(seq)] = True
    out = np.asarray(ivg_jax.forward(model, ids, mask))
    return np.stack([out[i, len(prompt) + len(r) - 1] for i, r in enumerate(responses)])


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def reference_search(base, prompt_ids, implicit, value, token, chunk, beams, candidates, chunk_length,
                     max_new_tokens, sampling, prompt_key, stop_ids, pad_id=0):
    """implicit: list of (tuned, reference, weight); value: (value_model, weight) or None.
    prompt_ids: dict member-name -> prompt ids ("base", ("tuned", i), ("ref", i), "value").
    Returns dict(tokens [WK][...], scores [WK], best, log_ratio [WK][...], kl [WK][...], duplicate [WK])."""
    width = beams * candidates
    length = min(chunk_length or max_new_tokens, max_new_tokens)
    n_chunks = math.ceil(max_new_tokens / length)
    ctx = max(len(p) for p in prompt_ids.values()) + n_chunks * length + 1
    keys = [jax.random.fold_in(prompt_key, s) for s in range(width)]
    rows = [dict(tokens=[], done=False, implicit=0.0, value=0.0, dup=False, log_ratio=[], kl=[])
            for _ in range(width)]
    temperature = sampling.temperature or 1.0

    def score(r):
        if r["dup"]:
            return -np.inf
        return r["implicit"] if chunk == "implicit" else r["value"] if chunk == "explicit" else 0.0

    step = 0
    for c in range(n_chunks):
        if c > 0:
            if all(r["done"] for r in rows):
                break
            scores = np.array([score(r) for r in rows])
            parents = np.argsort(-scores, kind="stable")[:beams]
            new = []
            for p in parents:
                for k in range(candidates):
                    child = {key: (list(v) if isinstance(v, list) else v) for key, v in rows[p].items()}
                    child["dup"] = child["dup"] or (child["done"] and k > 0)
                    new.append(child)
            rows = new
        for _ in range(length):
            responses = [r["tokens"] for r in rows]
            base_lp = log_softmax(last_outputs(base, prompt_ids["base"], responses, ctx))
            ratio = np.zeros_like(base_lp)
            for i, (tuned, ref, w) in enumerate(implicit):
                ratio += w * (log_softmax(last_outputs(tuned, prompt_ids[("tuned", i)], responses, ctx))
                              - log_softmax(last_outputs(ref, prompt_ids[("ref", i)], responses, ctx)))
            values = last_outputs(value[0], prompt_ids["value"], responses, ctx) if value else None
            guided = base_lp + (ratio if token == "implicit" else 0.0)
            if token == "explicit":
                guided = base_lp + value[1] * values
            for s, r in enumerate(rows):
                if r["done"] or step >= max_new_tokens:
                    continue
                logits = jnp.asarray(guided[s], jnp.float32)[None]
                if sampling.greedy:
                    y = int(np.argmax(guided[s]))
                else:
                    y = int(categorical(jax.random.fold_in(keys[s], step), filter_logits(logits, sampling)[0]))
                g_t = log_softmax(guided[s] / temperature)
                b_t = log_softmax(base_lp[s] / temperature)
                r["log_ratio"].append(g_t[y] - b_t[y])
                r["kl"].append(float(np.sum(np.exp(g_t) * (g_t - b_t))))
                r["implicit"] += ratio[s, y]
                if values is not None:
                    r["value"] = float(values[s, y])
                r["tokens"].append(y)
                r["done"] = y in stop_ids
            step += 1
    scores = np.array([score(r) for r in rows])
    return dict(tokens=[r["tokens"] for r in rows], scores=scores, best=int(np.argmax(scores)),
                log_ratio=[r["log_ratio"] for r in rows], kl=[r["kl"] for r in rows],
                duplicate=[r["dup"] for r in rows])
