"""The `Model` handle users hold, and the plain batched forward."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ivg_jax.config import ModelConfig
from ivg_jax.errors import InputError
from ivg_jax.model import quant
from ivg_jax.model.transformer import Transformer, full_forward, per_layer, stack_blocks, unstack_blocks


@dataclasses.dataclass
class Model:
    """A loaded model: static architecture (`config`, `graphdef`), weights as a plain pytree, its tokenizer.

    `params` is a nested dict of arrays (what crosses the jit boundary); `module()` gives the `Transformer`
    module back. Its blocks are stacked on a leading `layers` axis (what training, export and the module take)
    or held as one weights dict per layer (`per_layer`; `load_model(per_layer=True)`, `with_layout`), the
    layout decoding runs one block after another without copying them out of a stack.
    """

    config: ModelConfig
    graphdef: Any
    params: dict
    tokenizer: Any = None
    source: str = ""

    @property
    def dtype(self):
        """The weights' float dtype (an int8-quantized weight stands for its scale's dtype)."""
        return quant.leaves(self.params)[0].dtype

    @property
    def quantized(self) -> bool:
        """Whether projections are held as int8 (`quantize`; decode-only)."""
        return any(map(quant.is_quantized, quant.leaves(self.params)))

    def quantize(self, kind: str = "int8") -> Model:
        """The model with its projections, vocab heads and embedding as int8 weights with a float scale per
        output channel (`ivg_jax.model.quant`): a quarter of float32's bytes per decode step. Decode-only;
        the float weights are not kept (load again to train or export)."""
        quant.require_quantize(kind, optional=False)
        return dataclasses.replace(self, params=quant.quantize_params(self.params, self.config.is_moe),
                                   source=self.source if self.quantized else f"{self.source} ({kind})")

    @property
    def per_layer(self) -> bool:
        return per_layer(self.params)

    def with_layout(self, per_layer: bool) -> Model:
        """The model with its blocks per layer or stacked (the same weights; a copy of the blocks unless the
        layout is already the one asked for)."""
        return self.with_params((unstack_blocks if per_layer else stack_blocks)(self.params))

    def module(self) -> Transformer:
        return nnx.merge(self.graphdef, stack_blocks(self.params))

    def with_params(self, params: dict) -> Model:
        return dataclasses.replace(self, params=params)


def abstract_model(cfg: ModelConfig, dtype=jnp.float32):
    """(graphdef, abstract state) without allocating weights."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, dtype, rngs=nnx.Rngs(0))))


def init_model(cfg: ModelConfig, seed: int = 0, dtype=jnp.float32, tokenizer=None) -> Model:
    """A randomly initialised model (normal(0.02) weights, unit norms): for new heads and tests."""
    graphdef, state = nnx.split(Transformer(cfg, dtype, rngs=nnx.Rngs(seed)))
    return Model(cfg, graphdef, state.to_pure_dict(), tokenizer, source="random-init")


def forward(model: Model, input_ids, attention_mask=None) -> jax.Array:
    """Head output of a padded batch: float32 `[batch, time, vocab]` logits (values for a value head,
    `[batch, time]` for a scalar head). Padding may be on either side; padded positions hold garbage."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise InputError(f"input_ids must be [batch, time]; got shape {ids.shape}")
    mask = np.ones_like(ids, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}")
    longest = int(mask.sum(1).max(initial=0))
    cfg = model.config
    if cfg.positions == "learned" and longest > cfg.max_positions:
        raise InputError(
            f"a row has {longest} tokens but {cfg.family} has {cfg.max_positions} learned positions; "
            "truncate the input")
    if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
        raise InputError(f"token ids must lie in [0, {cfg.vocab_size}); got range [{ids.min()}, {ids.max()}]")
    return full_forward(model.graphdef, model.params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))


def attach_head(model: Model, head: str, scale: float = 0.0, seed: int = 0) -> Model:
    """The same backbone with a new head: "value" (vocab-sized token values, FUDGE) or "scalar" (a sequence
    reward model), or "lm" back again (tied embeddings or a fresh untied projection).

    New head weights are normal(`scale`) — zero by default, so a fresh value model starts as the constant
    predictor 0 and its first updates cannot be dominated by random head noise.
    """
    if head not in ("lm", "value", "scalar"):
        raise InputError(f"head must be 'lm', 'value' or 'scalar'; got {head!r}")
    cfg = model.config.replace(head=head)
    params = {k: v for k, v in model.params.items() if k not in ("lm_head", "value_head", "score_head")}
    shape = {"value": (cfg.d_model, cfg.vocab_size), "scalar": (cfg.d_model,),
             "lm": (cfg.d_model, cfg.vocab_size)}[head]
    if head != "lm" or not cfg.tie_embeddings:
        name = {"value": "value_head", "scalar": "score_head", "lm": "lm_head"}[head]
        weights = scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32) if scale else \
            jnp.zeros(shape, jnp.float32)
        params[name] = weights.astype(model.dtype)
    graphdef, _ = abstract_model(cfg, model.dtype)
    return Model(cfg, graphdef, params, model.tokenizer, source=f"{model.source} + {head} head")
