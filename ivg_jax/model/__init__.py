"""Model code: NNX modules for every family, the KV cache, and pure prefill/extend/step functions."""

from ivg_jax.model.cache import KVCache
from ivg_jax.model.transformer import Transformer, extend, full_forward, positions_from_mask, prefill, step

__all__ = ["KVCache", "Transformer", "extend", "full_forward", "positions_from_mask", "prefill", "step"]
