"""Reads tensors one at a time from a HF checkpoint directory (single file or sharded index).

Only safetensors is read: a pickle checkpoint (`.bin`, `.pt`, `.pth`, `.ckpt`) can run code when loaded, so it
is refused with instructions to convert it.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import safetensors

from ivg_jax.errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERT_HINT = (
    "Pickle checkpoints can execute code when loaded, so ivg-jax never reads them. In a trusted environment, "
    "convert once with: python -c \"from transformers import AutoModelForCausalLM as M; "
    "M.from_pretrained('{src}').save_pretrained('{src}-safetensors')\" and load the new directory.")


def refuse_pickle(path: Path) -> None:
    raise CheckpointError(f"{path}: found only a pickle checkpoint. " + CONVERT_HINT.format(src=path))


class SafetensorsSource:
    """`shape(key)` reads headers only; `get(key)` returns one tensor as a numpy array (bf16 via ml_dtypes)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        index = self.directory / "model.safetensors.index.json"
        single = self.directory / "model.safetensors"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e}); re-save the checkpoint") from e
            self.file_of = {k: self.directory / f for k, f in weight_map.items()}
        elif single.exists():
            self.file_of = None
            self._single = single
        else:
            files = sorted(self.directory.glob("*.safetensors"))
            if not files:
                if any(p.suffix in PICKLE_SUFFIXES for p in self.directory.iterdir()):
                    refuse_pickle(self.directory)
                raise CheckpointError(
                    f"{self.directory}: no model.safetensors or model.safetensors.index.json; "
                    "save the model with save_pretrained (safetensors is the default) or pass a .gguf file")
            self.file_of = None
            self._single = None
            self._files = files
        self._handles: dict[Path, object] = {}
        self._keys = self._collect_keys()

    def _open(self, path: Path):
        if path not in self._handles:
            if not path.exists():
                raise CheckpointError(f"{path}: shard listed in the index is missing; download it again")
            try:
                self._handles[path] = safetensors.safe_open(str(path), framework="numpy")
            except Exception as e:  # safetensors checks the header against the file size when opening
                raise CheckpointError(
                    f"{path}: unreadable safetensors file ({e}); it is truncated or corrupt, download or save it "
                    "again") from e
        return self._handles[path]

    def _collect_keys(self) -> dict[str, Path]:
        if self.file_of is not None:
            return dict(self.file_of)
        files = [self._single] if self._single is not None else self._files
        keys = {}
        for path in files:
            for k in self._open(path).keys():
                keys[k] = path
        return keys

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._open(self._keys[key]).get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        path = self._keys[key]
        handle = self._open(path)
        if handle.get_slice(key).get_dtype() == "BF16":
            # numpy has no bfloat16: read it as a host jax array and view it through ml_dtypes.
            with jax.default_device(jax.devices("cpu")[0]), safetensors.safe_open(str(path), "flax") as f:
                return np.asarray(f.get_tensor(key))
        return handle.get_tensor(key)
