"""The embedded default model (real SmolLM2-135M-Instruct GGUF) against transformers reading the same file."""

from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from oracle import ours_and_transformers

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
    return ours_and_transformers(default_model_path())


def test_config_read_from_gguf(models):
    cfg = models[0].config
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (
        "llama", 30, 576, 9, 3, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0


def test_greedy_continuation_equals_transformers(models):
    """Our batched, left-padded, jitted greedy decode against transformers by teacher forcing: along our path,
    transformers' argmax at every step is our next token (so its greedy decode is our path, by induction), and our
    logits of one full forward equal its logits."""
    ours, hf = models
    got = complete(ours, PROMPTS, max_new_tokens=NEW_TOKENS, stop_ids=[])
    assert (got.lengths == NEW_TOKENS).all()
    for i, prompt in enumerate(PROMPTS):
        ids = ours.tokenizer(prompt)["input_ids"]
        path = np.array([ids + got.tokens[i].tolist()])
        with torch.no_grad():
            reference = hf(torch.tensor(path)).logits[0].numpy()
        np.testing.assert_array_equal(reference[len(ids) - 1:-1].argmax(-1), got.tokens[i],
                                      err_msg=f"prompt {i}: {prompt!r}")
        logits = np.asarray(ivg_jax.forward(ours, path))[0]
        np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-4 * np.abs(reference).max(),
                                   err_msg=f"prompt {i}")
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


def test_gguf_tokenizer_is_converted_once_then_read_back_unchanged(tmp_path, monkeypatch):
    """The cached tokenizer equals transformers' own conversion of the GGUF (the first load returns exactly that)."""
    from ivg_jax.loading.loader import _gguf_tokenizer

    monkeypatch.setenv("IVG_JAX_CACHE_DIR", str(tmp_path))
    converted = _gguf_tokenizer(default_model_path())
    entries = list((tmp_path / "tokenizers").iterdir())
    assert len(entries) == 1 and (entries[0] / "tokenizer.json").exists()  # no staging directory left behind
    cached = _gguf_tokenizer(default_model_path())
    assert type(cached) is type(converted)
    assert cached.get_vocab() == converted.get_vocab()
    texts = ["Here is a movie review from imdb: I watched this movie last night and",
             "naïve café — 東京 🎬\n\n  def f(x):\treturn x**2", "<|im_start|>user\nHi<|im_end|>", ""]
    for text in texts:
        assert cached(text)["input_ids"] == converted(text)["input_ids"], text
        ids = converted(text)["input_ids"]
        assert cached.decode(ids) == converted.decode(ids)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "all_special_ids", "chat_template"):
        assert getattr(cached, attr) == getattr(converted, attr), attr
    chat = [{"role": "user", "content": "Review this film."}]
    assert cached.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        converted.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def test_stop_tables_on_the_real_vocabulary_equal_brute_force(models):
    """Every one of the 49,152 tokens' in-context texts through the KMP tables of multi-character stop strings,
    against the definition (longest prefix of the stop string ending the text; its length once it occurred)."""
    from ivg_jax.decoding.stops import token_texts, transition_table

    ours, _ = models
    texts = token_texts(ours.tokenizer, ours.config.vocab_size)
    assert texts[ours.tokenizer(" world", add_special_tokens=False)["input_ids"][0]] == " world"
    for stop in ("\n\n", "The end.", "!!"):
        table = transition_table(stop, texts)
        for q in range(len(stop)):
            seen = [stop[:q] + t for t in texts]
            expected = [len(stop) if stop in x else max(k for k in range(len(stop)) if x.endswith(stop[:k]))
                        for x in seen]
            np.testing.assert_array_equal(table[q], expected, err_msg=f"{stop!r} from state {q}")
        assert (table[len(stop)] == len(stop)).all()


def _resident_file_pages_kb(path) -> int:
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if "-" in line.split(" ", 1)[0] and not line.startswith(("Rss", "Size")):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_gguf_is_parsed_once_per_unchanged_file_and_a_load_leaves_no_file_pages_resident(tmp_path, monkeypatch):
    import os
    import shutil

    from ivg_jax.loading import gguf_source

    path = tmp_path / "model.gguf"
    shutil.copy(default_model_path(), path)
    parses = []
    real_open = gguf_source.open_gguf
    monkeypatch.setattr(gguf_source, "open_gguf", lambda p: parses.append(p) or real_open(p))
    first = gguf_source.gguf_index(path)
    assert gguf_source.gguf_index(path) is first and len(parses) == 1  # inspect and load share one parse
    # A new process finds the index on disk: no parse, the same metadata and tensor table.
    gguf_source._index.cache_clear()
    assert gguf_source.gguf_index(path) == first and len(parses) == 1
    # A damaged index file is parsed anew, never trusted.
    for index_file in (Path(os.environ["IVG_JAX_CACHE_DIR"]) / "gguf-index").glob("*.json"):
        index_file.write_text('{"metadata": {}, "tensors": [{"name": 1}]}')
    gguf_source._index.cache_clear()
    assert gguf_source.gguf_index(path) == first and len(parses) == 2
    model = ivg_jax.load_model(path)
    # Dequantising touched every page of the file; a finished load must not keep them in the resident set.
    assert _resident_file_pages_kb(path) < 0.05 * os.path.getsize(path) / 1024
    again = ivg_jax.load_model(path, tokenizer=False)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A replaced file (a new inode and mtime) is a new parse, never the old file's index.
    replacement = tmp_path / "new.gguf"
    shutil.copy(default_model_path(), replacement)
    os.replace(replacement, path)
    assert gguf_source.gguf_index(path) == first and len(parses) == 3
