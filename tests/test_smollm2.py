"""The embedded default model (real SmolLM2-135M-Instruct GGUF) against transformers reading the same file."""

import numpy as np
import pytest
import torch

import ivg_jax
from ivg_jax.decoding.plain import complete
from ivg_jax.defaults import default_model_path

PROMPTS = [
    "The film was",
    "Here is a movie review from imdb: I watched this movie last night and",
    "def fibonacci(n):",
    "The capital of France is",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def models():
    path = default_model_path()
    ours = ivg_jax.load_model(path)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    return ours, hf


def test_config_read_from_gguf(models):
    cfg = models[0].config
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (
        "llama", 30, 576, 9, 3, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    """transformers' greedy continuation without stopping at EOS (so every prompt gives n tokens)."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_greedy_continuation_equals_transformers(models):
    ours, hf = models
    hf.generation_config.eos_token_id = None
    got = complete(ours, PROMPTS, max_new_tokens=NEW_TOKENS, stop_ids=[])  # batched, left-padded, jitted
    assert (got.lengths == NEW_TOKENS).all()
    tok = ours.tokenizer
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        expected = hf_greedy(hf, ids, NEW_TOKENS)
        assert len(expected) == NEW_TOKENS
        np.testing.assert_array_equal(got.tokens[i], expected, err_msg=f"prompt {i}: {prompt!r}")
        # Logits along the whole greedy path, ours (one full forward) vs transformers.
        full = np.array([ids + expected])
        with torch.no_grad():
            reference = hf(torch.tensor(full)).logits[0].numpy()
        logits = np.asarray(ivg_jax.forward(ours, full))[0]
        np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
    assert got.texts[3].strip(), "decoded text is empty"


def test_export_with_tokenizer_loads_in_transformers(models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours, _ = models
    out = ivg_jax.export_hf(ours, tmp_path / "smollm2")
    tok = AutoTokenizer.from_pretrained(out)
    text = "Here is a movie review from imdb: a quiet, moving film."
    assert tok(text)["input_ids"] == ours.tokenizer(text)["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        reference = hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(np.asarray(ivg_jax.forward(ours, [ids]))[0], reference, rtol=0,
                               atol=1e-4 * np.abs(reference).max())


def test_guided_generation_with_templates_and_stop_strings(models):
    """Real model, real tokenizer: each model sees its own template; a stop string ends rows in-graph and is
    trimmed from the text."""
    ours, _ = models
    guide = ivg_jax.ImplicitGuide(ours, ours, weight=1.5, template="Here is a glowing, enthusiastic review: {prompt}",
                                  reference_template="Here is a movie review from imdb: {prompt}")
    guidance = ivg_jax.Guidance(
        implicit=[guide],
        token="implicit", base_template="Here is a movie review from imdb: {prompt}")
    out = ivg_jax.generate(ours, ["The film", "I watched this"], guidance, sampling=ivg_jax.Sampling(0.7),
                           max_new_tokens=24, seed=0, stop_strings=["."])
    tok = ours.tokenizer
    for text, tokens, n in zip(out.texts, out.tokens, out.lengths):
        assert "." not in text
        full = tok.decode(tokens[:n])
        if n < 24:  # ended by the stop string: its last token carries the "."
            assert "." in tok.decode(tokens[n - 1:n]) and "." not in tok.decode(tokens[:n - 1])
        assert text == full.split(".")[0]
    assert np.abs(out.log_ratio).max() > 0, "tuned and reference see different templates: guidance is non-zero"
