"""GGUF files of each architecture the loader reads (llama, qwen2, qwen3), written from random transformers models
the way llama.cpp's converter writes them (`oracle.write_gguf`), read by ivg-jax and by transformers: both readers
and the original model give the same logits. The real files (SmolLM2 in test_parity, the optional Qwen2.5 0.5B in
test_qwen2) cover quantised blocks; these cover what the real files do not: qwen3's q/k norms and head width
(CI has no qwen2 or qwen3 file)."""

import numpy as np
import pytest
import torch
from oracle import GGUF_TOKENS, ours_and_transformers, random_model, write_gguf

import ivg_jax

LAYOUT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=len(GGUF_TOKENS),
              max_position_embeddings=128)
CASES = {
    # llama.cpp permutes llama's q/k rows; untied head
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_attention_heads=4, num_key_value_heads=2,
                                                      tie_word_embeddings=False)),
    # q/k/v biases, tied head
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_attention_heads=4, num_key_value_heads=2,
                                                      tie_word_embeddings=True, rope_theta=1e6)),
    # per-head q/k norms; heads wider than d_model / n_heads (128, as in Qwen3: transformers' GGUF reader takes
    # Qwen3Config's default head_dim, the file's key_length is ours)
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                                                      tie_word_embeddings=True)),
}


@pytest.mark.parametrize("arch", list(CASES))
def test_gguf_logits_equal_transformers_and_the_original_model(arch, tmp_path):
    config_cls, model_cls, kwargs = CASES[arch]
    original = random_model(config_cls, model_cls, {**LAYOUT, **kwargs})
    path = tmp_path / f"{arch}.gguf"
    write_gguf(original, path, arch)
    ours, theirs = ours_and_transformers(path)

    cfg = ours.config
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.tie_embeddings) == (
        kwargs["num_attention_heads"], kwargs["num_key_value_heads"], kwargs.get("head_dim", 16),
        kwargs["tie_word_embeddings"])
    assert (cfg.attn_bias, cfg.qk_norm) == (arch == "qwen2", arch == "qwen3")
    ids = ours.tokenizer("Here is the movie review: I watched the film last night and")["input_ids"]
    assert GGUF_TOKENS.index("Ġthe") in ids  # the file's merges were read
    with torch.no_grad():
        reference = original(torch.tensor([ids])).logits[0].numpy()
        read_by_transformers = theirs(torch.tensor([ids])).logits[0].numpy()
    scale = np.abs(reference).max()
    np.testing.assert_allclose(read_by_transformers, reference, rtol=0, atol=1e-5 * scale)  # the file is right
    logits = np.asarray(ivg_jax.forward(ours, np.array([ids])))[0]
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-4 * scale)
