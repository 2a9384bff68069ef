"""The torch-free GGUF tokenizer equals transformers' own GGUF conversion, and builds with torch absent."""

import json
import subprocess
import sys

import pytest

from ivg_jax.defaults import default_model_path
from ivg_jax.loading.gguf_tokenizer import tokenizer_from_gguf

TEXTS = ["Here is a movie review from imdb: I watched this movie last night and",
         "naïve café — 東京 🎬\n\n  def f(x):\treturn x**2", "<|im_start|>user\nHi<|im_end|>", "", "   ", "a\r\nb"]


@pytest.fixture(scope="module")
def both():
    from transformers import AutoTokenizer

    path = default_model_path()
    reference = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)  # transformers' path (torch)
    return tokenizer_from_gguf(path), reference


def test_same_backend_vocabulary_and_special_tokens(both):
    ours, reference = both
    # The serialised backend is the whole tokenizer: model, merges, pre-tokenizer, decoder, added tokens.
    assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(reference.backend_tokenizer.to_str())
    assert ours.get_vocab() == reference.get_vocab() and len(ours) == len(reference) == 49152
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "bos_token_id", "eos_token_id",
                 "pad_token_id", "unk_token_id", "all_special_ids", "chat_template"):
        assert getattr(ours, attr) == getattr(reference, attr), attr


def test_same_encodings_and_chat_template(both):
    ours, reference = both
    for text in TEXTS:
        ids = reference(text)["input_ids"]
        assert ours(text)["input_ids"] == ids, text
        assert ours.decode(ids) == reference.decode(ids)
    chat = [{"role": "user", "content": "Review this film."}]
    assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        reference.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def test_builds_with_torch_absent():
    """A fresh install has no torch: block it (and the other test-only packages) and build the tokenizer."""
    script = """
import sys
BLOCK = {"torch", "accelerate", "pytest"}
class Hide:
    def __init__(self, f): self.f = f
    def find_spec(self, name, path=None, target=None):
        return None if name.split(".")[0] in BLOCK else self.f.find_spec(name, path, target)
    def __getattr__(self, a): return getattr(self.f, a)
sys.meta_path[:] = [Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
from ivg_jax.defaults import default_model_path
from ivg_jax.loading.gguf_tokenizer import tokenizer_from_gguf
tok = tokenizer_from_gguf(default_model_path())
assert "torch" not in sys.modules
print(tok("I watched this")["input_ids"])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == str(tokenizer_from_gguf(default_model_path())("I watched this")["input_ids"])


def test_the_cache_key_is_the_content_hash_read_once_per_file_identity(tmp_path, monkeypatch):
    """The converted tokenizer is keyed by the file's sha256; a load must not re-read the whole file to get it, but
    a replaced file (new inode and mtime) must be hashed anew, and a damaged cached digest never trusted."""
    import hashlib
    import os

    from ivg_jax.loading import gguf_source

    monkeypatch.setenv("IVG_JAX_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(os.urandom(3 << 20))
    reads = []
    real_digest = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, d: reads.append(f.name) or real_digest(f, d))

    def brute(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert gguf_source.gguf_sha256(path) == brute(path) and len(reads) == 1
    assert gguf_source.gguf_sha256(path) == brute(path) and len(reads) == 1  # this process: remembered
    gguf_source._sha256.cache_clear()  # a new process: read from the cache directory
    assert gguf_source.gguf_sha256(path) == brute(path) and len(reads) == 1
    for saved in (tmp_path / "cache" / "gguf-sha256").glob("*.txt"):
        saved.write_text("not a digest")
    gguf_source._sha256.cache_clear()
    assert gguf_source.gguf_sha256(path) == brute(path) and len(reads) == 2
    replacement = tmp_path / "new.gguf"
    replacement.write_bytes(os.urandom(3 << 20))
    os.replace(replacement, path)
    assert gguf_source.gguf_sha256(path) == brute(path) and len(reads) == 3
