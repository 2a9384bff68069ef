"""Reads a llama-, qwen2- or qwen3-architecture GGUF file as if it were a HF checkpoint: HF key names, HF
layouts, float32.

Dequantisation is the `gguf` package's. llama.cpp's converter permutes the q/k projection rows of llama-
architecture models for its interleaved rotary layout; they are permuted back to HF's rotate-half layout here,
so the HF table applies. Qwen models are converted without that permutation (llama.cpp runs them with its
"NEOX" rotary, which is HF's rotate-half), so their rows are read as stored — the Qwen2 parity test against
transformers' own GGUF loading checks exactly this.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ivg_jax.errors import CheckpointError, UnsupportedError

_LLAMA_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LLAMA_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def _hf_name(name: str) -> str | None:
    if name in _LLAMA_NAMES:
        return _LLAMA_NAMES[name]
    m = _BLOCK.fullmatch(name)
    if m and m.group(2) in _LLAMA_BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_LLAMA_BLOCK_NAMES[m.group(2)]}"
    return None


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation: [heads, 2, H/2] row order -> [heads, H/2, 2] undone."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def supported_quantisations() -> set:
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    return {Q.F32, Q.F16} | set(quants._type_traits)


def open_gguf(path: Path):
    """A fresh `gguf.GGUFReader` of a file, or one line saying the file is not a readable GGUF."""
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e}); it is truncated or corrupt") from e


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """Where one tensor lies in the file, as `gguf.GGUFReader` found it."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType (an int in the JSON index)
    shape: tuple[int, ...]  # HF order (rows first)
    dtype: str  # numpy dtype of the stored data: the float type, or uint8 blocks for a quantised type
    data_shape: tuple[int, ...]
    offset: int


def gguf_index(path: Path) -> tuple[dict[str, Any], list[GGUFTensor]]:
    """(metadata without the vocabulary arrays, tensors) of a GGUF file.

    gguf's reader parses every field when it opens a file, the tokenizer's ~50k strings one at a time: 3.7 s for
    SmolLM2 on this project's CPU, in every process that inspects or loads the model. What a load needs is small,
    so it is kept once per process and on disk (`cache_dir()/gguf-index`), keyed by the file's identity (path,
    size, mtime, inode) and the gguf version: a replaced file is parsed anew. An unwritable cache only costs the
    parse."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from e
    return _index(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


_INDEX_FORMAT = 1


def gguf_sha256(path: Path) -> str:
    """The sha256 of a GGUF file's content, hashed once per file identity (path, size, mtime, inode; kept per process
    and on disk like the index): the converted tokenizer's cache key. Hashing is a full read of the file, ~0.7 s
    for a 1.1 GB model on this project's CPU, which every load paid before."""
    path = Path(path)
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def _derived_file(kind: str, identity: list) -> Path:
    """Where a value derived from a file with this identity is kept: `cache_dir()/kind/<hash of identity>`."""
    from ivg_jax.loading.loader import cache_dir

    return cache_dir() / kind / hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]


def _save_derived(path: Path, text: str) -> None:
    """Atomically (a concurrent reader sees nothing or the whole file); an unwritable cache only costs recomputing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        pass


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    cached = _derived_file("gguf-sha256", [path, size, mtime_ns, inode]).with_suffix(".txt")
    try:
        digest = cached.read_text().strip()
        if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            return digest
    except OSError:
        pass
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    _save_derived(cached, digest)
    return digest


@functools.lru_cache(maxsize=8)
def _index(path: str, size: int, mtime_ns: int, inode: int) -> tuple[dict[str, Any], list[GGUFTensor]]:
    from gguf import GGMLQuantizationType

    cached = _derived_file("gguf-index", [path, size, mtime_ns, inode, importlib.metadata.version("gguf"),
                                          _INDEX_FORMAT]).with_suffix(".json")
    try:
        data = json.loads(cached.read_text())
        return data["metadata"], [GGUFTensor(**{**t, "tensor_type": GGMLQuantizationType(t["tensor_type"]),
                                                "shape": tuple(t["shape"]), "data_shape": tuple(t["data_shape"])})
                                  for t in data["tensors"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    reader = open_gguf(Path(path))
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "merges", "token_type", "scores")):
            continue  # vocab arrays: large, and read only when the tokenizer is converted (then cached)
        try:
            value = field.contents()
            json.dumps(value)
        except Exception:  # fields gguf cannot decode are not ones we read
            continue
        metadata[key] = value
    tensors = [GGUFTensor(t.name, t.tensor_type, tuple(int(x) for x in reversed(t.shape)), t.data.dtype.str,
                          tuple(t.data.shape), int(t.data_offset)) for t in reader.tensors]
    _save_derived(cached, json.dumps({"metadata": metadata, "tensors": [dataclasses.asdict(t) for t in tensors]}))
    return metadata, tensors


class GGUFSource:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.metadata, tensors = gguf_index(self.path)
        # One read-only mapping per source, unmapped with it: a finished load keeps no file pages resident.
        self._file = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._tensors: dict[str, GGUFTensor] = {}
        unsupported, unmapped = [], []
        ok = supported_quantisations()
        for t in tensors:
            if t.tensor_type not in ok:
                unsupported.append(f"{t.name} ({t.tensor_type.name})")
            hf = _hf_name(t.name)
            if hf is None:
                unmapped.append(t.name)
            else:
                self._tensors[hf] = t
        if unsupported:
            raise UnsupportedError(
                f"{self.path}: GGUF quantisation the gguf package cannot dequantise: {', '.join(unsupported[:5])}"
                f"{' ...' if len(unsupported) > 5 else ''}. Re-quantise the model to a supported type "
                f"({', '.join(sorted(q.name for q in ok))}) or load its HF safetensors checkpoint.")
        if unmapped:
            # e.g. Llama-3.1's rope_freqs.weight or MoE expert tensors: ignoring them would change the model.
            raise UnsupportedError(
                f"{self.path}: GGUF tensors ivg-jax does not know how to use: {unmapped[:5]}; load the model's HF "
                "safetensors checkpoint instead.")

    @property
    def tied(self) -> bool:
        return "lm_head.weight" not in self._tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def shape(self, key: str) -> tuple[int, ...]:
        return self._tensors[key].shape

    def get(self, key: str) -> np.ndarray:
        from gguf import quants

        t = self._tensors[key]
        try:
            dtype = np.dtype(t.dtype)
            # a plain view of the mapping (no copy): gguf dequantises in thousands of row groups, and slicing a
            # np.memmap runs its Python __array_finalize__ on every one (~0.5 s of a 2 s SmolLM2 load)
            stored = np.asarray(self._file[t.offset:t.offset + dtype.itemsize * int(np.prod(t.data_shape))])
            w = quants.dequantize(stored.view(dtype).reshape(t.data_shape), t.tensor_type)
        except Exception as e:
            raise CheckpointError(f"{self.path}: tensor {t.name} could not be dequantised ({e})") from e
        w = np.asarray(w, np.float32).reshape(self.shape(key))
        if self.metadata.get("general.architecture") != "llama":
            return w
        if key.endswith("q_proj.weight"):
            w = _unpermute(w, int(self.metadata["llama.attention.head_count"]))
        elif key.endswith("k_proj.weight"):
            n = self.metadata.get("llama.attention.head_count_kv", self.metadata["llama.attention.head_count"])
            w = _unpermute(w, int(n))
        return w
