"""Reads a llama-, qwen2- or qwen3-architecture GGUF file as if it were a HF checkpoint: HF key names, HF
layouts, float32.

Dequantisation is the `gguf` package's. llama.cpp's converter permutes the q/k projection rows of llama-
architecture models for its interleaved rotary layout; they are permuted back to HF's rotate-half layout here,
so the HF table applies. Qwen models are converted without that permutation (llama.cpp runs them with its
"NEOX" rotary, which is HF's rotate-half), so their rows are read as stored — the Qwen2 parity test against
transformers' own GGUF loading checks exactly this.
"""

from __future__ import annotations

import functools
import mmap
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
    """`gguf.GGUFReader` of a file (parsed once per process while the file is unchanged), or one line saying the
    file is not a readable GGUF."""
    path = Path(path)
    try:
        stat = path.stat()
        return _parsed_gguf(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e}); it is truncated or corrupt") from e


# gguf parses every metadata field, the tokenizer's ~50k strings one by one, when a reader opens: ~3.5 s for
# SmolLM2, paid by inspect_model, load_model and the tokenizer alike, and jobs call all three for each model. The
# key is the file's identity, so a new or replaced file (other size, mtime or inode) is parsed anew.
@functools.lru_cache(maxsize=4)
def _parsed_gguf(path: str, size: int, mtime_ns: int, inode: int):
    import gguf

    return gguf.GGUFReader(path)


def release_pages(reader) -> None:
    """Drops the file pages a finished load touched from this process's resident set (they stay in the page
    cache; the mapping is read-only, so nothing is lost): a cached reader would otherwise keep a whole file's
    worth of resident memory for the life of the process (1.1 GB for the Qwen 1.5B file)."""
    mapping = getattr(reader.data, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


class GGUFSource:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.reader = open_gguf(self.path)
        self.metadata: dict[str, Any] = {}
        for key, field in self.reader.fields.items():
            if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "merges", "token_type", "scores")):
                continue  # vocab arrays: large, and the tokenizer is built by transformers from the file itself
            try:
                self.metadata[key] = field.contents()
            except Exception:  # fields gguf cannot decode are not ones we read
                continue
        self._tensors = {}
        unsupported, unmapped = [], []
        ok = supported_quantisations()
        for t in self.reader.tensors:
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
        return tuple(int(x) for x in reversed(self._tensors[key].shape))

    def get(self, key: str) -> np.ndarray:
        from gguf import quants

        t = self._tensors[key]
        try:
            w = quants.dequantize(t.data, t.tensor_type)
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
