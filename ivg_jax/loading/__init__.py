"""Checkpoint I/O: HF safetensors directories, GGUF files, hub ids in; HF directories out."""

from ivg_jax.loading.export import export_hf
from ivg_jax.loading.loader import build_params, inspect_model, load_model

__all__ = ["build_params", "export_hf", "inspect_model", "load_model"]
