"""Our logits equal transformers' for every family, padded either side, and cached decoding equals a full forward."""

import numpy as np
import pytest
from conftest import ALL_FAMILIES
from oracle import hf_logits, pad_batch, random_rows

import ivg_jax
from ivg_jax.model import extend, prefill, step
from ivg_jax.model.layers import rope_inverse_frequencies

LENGTHS = [9, 5, 1, 12]  # 12 > the Mistral window (4); 1 exercises a row that is almost all padding


def tolerance(reference: np.ndarray) -> float:
    return 1e-4 * float(np.abs(reference).max())


@pytest.mark.parametrize("name", ALL_FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_transformers(hf_checkpoint, name, side):
    directory, hf = hf_checkpoint(name)
    model = ivg_jax.load_model(directory)
    rows = random_rows(LENGTHS, seed=1)
    ids, mask = pad_batch(rows, side)
    logits = np.asarray(ivg_jax.forward(model, ids, mask))
    assert logits.dtype == np.float32 and logits.shape == (*ids.shape, model.config.vocab_size)
    for i, row in enumerate(rows):
        reference = hf_logits(hf, row)
        np.testing.assert_allclose(logits[i][mask[i]], reference, rtol=0, atol=tolerance(reference))


def test_rope_scaling_is_exercised(hf_checkpoint):
    """The Llama-3 case would not catch a missing rescale if the rule left these frequencies unchanged."""
    model = ivg_jax.load_model(hf_checkpoint("llama3-rope-scaling")[0])
    scaled = rope_inverse_frequencies(model.config)
    plain = rope_inverse_frequencies(model.config.replace(rope_scaling=None))
    assert model.config.rope_scaling.kind == "llama3"
    assert np.abs(scaled - plain).max() > 1e-3 * plain.max()


@pytest.mark.parametrize("name", ALL_FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_cached_decoding_equals_full_forward(hf_checkpoint, name, side):
    """Prefill a padded prompt batch, then feed each row's continuation one token per step (and once as a
    multi-token extend): every step's logits equal one uncached forward over prompt + continuation."""
    model = ivg_jax.load_model(hf_checkpoint(name)[0])
    prompts = random_rows([6, 3, 8], seed=2)
    continuation = random_rows([7, 7, 7], seed=3)
    ids, mask = pad_batch(prompts, side)
    full_rows = [p + c for p, c in zip(prompts, continuation)]
    full_ids, full_mask = pad_batch(full_rows, "left")
    full = np.asarray(ivg_jax.forward(model, full_ids, full_mask))
    expected = full[:, -7:]  # left padding: the continuation is the last 7 columns of every row

    out, cache = prefill(model.graphdef, model.params, ids, mask, capacity=ids.shape[1] + 7)
    np.testing.assert_allclose(out[:, -1] if side == "left" else out[np.arange(3), mask.sum(1) - 1],
                               full[np.arange(3), [len(p) - 1 + (full_ids.shape[1] - len(f)) for p, f in
                                                   zip(prompts, full_rows)]], atol=tolerance(full))
    last, _ = prefill(model.graphdef, model.params, ids, mask, capacity=ids.shape[1] + 7, last_only=True)
    np.testing.assert_allclose(last, out[np.arange(3), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], 1)], atol=1e-6)
    steps = []
    for t in range(7):
        logits, cache = step(model.graphdef, model.params, np.array([c[t] for c in continuation]), cache)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.stack(steps, 1), expected, rtol=0, atol=tolerance(full))
    assert int(cache.index) == ids.shape[1] + 7

    _, cache = prefill(model.graphdef, model.params, ids, mask, capacity=ids.shape[1] + 7)
    chunk, _ = extend(model.graphdef, model.params, np.array(continuation), np.ones((3, 7), bool), cache)
    np.testing.assert_allclose(np.asarray(chunk), expected, rtol=0, atol=tolerance(full))
