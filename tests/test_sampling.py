"""Sampling transforms and the inverse-CDF sampler against brute-force numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ivg_jax.decoding.sampling import Sampling, categorical, filter_logits, sample


def test_categorical_matches_the_distribution():
    """Empirical frequencies of 200k draws are within 5 standard errors of softmax(logits), for a vocabulary that
    is not a multiple of the CDF block, with filtered (-inf) tokens never drawn."""
    rng = np.random.default_rng(0)
    v = 300
    logits = rng.normal(0, 2, v).astype(np.float32)
    logits[rng.choice(v, 40, replace=False)] = -np.inf
    probs = np.exp(logits - logits[np.isfinite(logits)].max())
    probs /= probs.sum()
    n = 200_000
    keys = jax.random.split(jax.random.key(3), n)
    draws = np.asarray(jax.jit(jax.vmap(categorical, in_axes=(0, None)))(keys, jnp.asarray(logits)))
    freq = np.bincount(draws, minlength=v) / n
    assert freq[~np.isfinite(logits)].sum() == 0
    se = np.sqrt(probs * (1 - probs) / n) + 1e-9
    assert np.max(np.abs(freq - probs) / se) < 5


def numpy_filter(logits, temperature, top_k, top_p):
    x = logits / temperature
    if top_k:
        kth = np.sort(x)[::-1][top_k - 1]
        x = np.where(x >= kth, x, -np.inf)
    if top_p is not None:
        p = np.exp(x - x.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        keep = np.zeros_like(p, bool)
        mass = 0.0
        for i in order:  # keep tokens until the mass before them reaches top_p
            if mass >= top_p:
                break
            keep[i] = True
            mass += p[i]
        x = np.where(keep | (p >= p[keep].min()), x, -np.inf)
    return x


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, None, None), (1.0, 5, None), (0.5, None, 0.8),
                                                     (1.3, 20, 0.9)])
def test_filter_order_temperature_then_top_k_then_top_p(temperature, top_k, top_p):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, (4, 50)).astype(np.float32)
    logits[0, :3] = 4.0  # ties at the top-k boundary are kept
    got = np.asarray(filter_logits(jnp.asarray(logits), Sampling(temperature, top_k, top_p)))
    for row, out in zip(logits, got):
        want = numpy_filter(row.astype(np.float64), temperature, top_k, top_p)
        np.testing.assert_array_equal(np.isfinite(out), np.isfinite(want))
        np.testing.assert_allclose(out[np.isfinite(out)], want[np.isfinite(want)], rtol=1e-6)


def test_top_k_keeps_ties():
    logits = jnp.asarray([[3.0, 3.0, 3.0, 1.0, 0.0]])
    kept = np.isfinite(np.asarray(filter_logits(logits, Sampling(1.0, top_k=2))))
    assert kept.tolist() == [[True, True, True, False, False]]


def test_greedy_and_row_keys():
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(3, 40)), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 3)
    np.testing.assert_array_equal(sample(keys, logits, Sampling(0.0)), np.argmax(np.asarray(logits), 1))
    # a row's draw depends only on its own key and logits
    a = sample(keys, logits, Sampling(1.0))
    b = sample(keys[1:2], logits[1:2], Sampling(1.0))
    assert int(a[1]) == int(b[0])


@pytest.mark.parametrize("kwargs,what", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_p=float("nan")), "top_p"), (dict(top_k=-1), "top_k")])
def test_bad_sampling_values_are_input_errors(kwargs, what):
    from ivg_jax.errors import InputError

    with pytest.raises(InputError, match=what):
        Sampling(**kwargs)
