"""Per-family table: HF checkpoint key -> our parameter path, and how the tensor is laid out.

One table serves loading (HF -> ours) and export (ours -> HF), so the two can never disagree.

Layouts (ours is always `[in dims..., out dims...]`, ready for `x @ w` / einsum):
- "linear": an `nn.Linear` weight `[out, in]`; ours is its transpose reshaped (q: `[D, N, H]`, o: `[N, H, D]`).
- "copy": same element order, only reshaped (embeddings, norms, biases, GPT-2 `Conv1D` weights `[in, out]`).
`part=(j, n)` takes the j-th of n equal slices of the HF tensor's last axis (GPT-2's fused `c_attn`).
Keys contain `{i}` (layer) and `{e}` (expert); such weights are stacked on leading axes `[layers, experts, ...]`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ivg_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Rule:
    path: tuple[str, ...]
    key: str
    layout: str  # "linear" | "copy"
    n_in: int = 1  # how many leading dims of our (per-layer, per-expert) tensor form the HF "in" axis
    part: tuple[int, int] | None = None

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.key

    @property
    def per_expert(self) -> bool:
        return "{e}" in self.key

    def n_stacked(self) -> int:
        return int(self.per_layer) + int(self.per_expert)

    def hf_shape(self, slice_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The HF tensor's full shape, given the shape of our tensor for one (layer, expert)."""
        n_in = math.prod(slice_shape[: self.n_in])
        n_out = math.prod(slice_shape[self.n_in:])
        shape = (n_in, n_out) if self.n_in else (n_out,)
        if self.layout == "linear":
            shape = shape[::-1]
        if self.part is not None:
            shape = shape[:-1] + (shape[-1] * self.part[1],)
        return shape

    def to_ours(self, hf: np.ndarray, slice_shape: tuple[int, ...]) -> np.ndarray:
        if self.part is not None:
            j, n = self.part
            width = hf.shape[-1] // n
            hf = hf[..., j * width:(j + 1) * width]
        if self.layout == "linear":
            hf = hf.T
        return np.ascontiguousarray(hf).reshape(slice_shape)

    def to_hf(self, stacked: jax.Array) -> np.ndarray:
        """Our stacked tensor `[layers, experts, ...]` -> an array whose `[index]` (from `keys`) is that slice's HF
        tensor, or its `part` slice of one. Linear weights are transposed as one stack by XLA (tiled, every core):
        numpy's per-slice transposing copies ran at ~150 MB/s, half of a SmolLM2 export's time."""
        lead, per_slice = stacked.shape[:self.n_stacked()], stacked.shape[self.n_stacked():]
        if not self.n_in:
            return np.asarray(jax.device_get(stacked.reshape(*lead, -1)))
        flat = stacked.reshape(*lead, math.prod(per_slice[:self.n_in]), -1)
        if self.layout == "linear":
            flat = jnp.swapaxes(flat, -1, -2)
        return np.asarray(jax.device_get(flat))

    def keys(self, n_layers: int, n_experts: int) -> Iterator[tuple[tuple[int, ...], str]]:
        """(index into our stacked tensor, HF key) for every slice."""
        layers = range(n_layers) if self.per_layer else [None]
        experts = range(n_experts) if self.per_expert else [None]
        for i in layers:
            for e in experts:
                index = tuple(x for x in (i, e) if x is not None)
                yield index, self.key.format(i=i, e=e)


def _llama_rules(cfg: ModelConfig) -> list[Rule]:
    layer = "model.layers.{i}."
    rules = [
        Rule(("embed",), "model.embed_tokens.weight", "copy"),
        Rule(("blocks", "attn_norm", "scale"), layer + "input_layernorm.weight", "copy", 0),
        Rule(("final_norm", "scale"), "model.norm.weight", "copy", 0),
    ]
    if cfg.sandwich_norms:  # Gemma-2/3: "post_attention" is the attention output's norm, not the MLP input's
        rules += [Rule(("blocks", "attn_post_norm", "scale"), layer + "post_attention_layernorm.weight", "copy", 0),
                  Rule(("blocks", "mlp_norm", "scale"), layer + "pre_feedforward_layernorm.weight", "copy", 0),
                  Rule(("blocks", "mlp_post_norm", "scale"), layer + "post_feedforward_layernorm.weight", "copy", 0)]
    else:
        rules.append(Rule(("blocks", "mlp_norm", "scale"), layer + "post_attention_layernorm.weight", "copy", 0))
    for name in "qkv":
        rules.append(Rule(("blocks", "attn", name), layer + f"self_attn.{name}_proj.weight", "linear"))
        if cfg.attn_bias:
            rules.append(Rule(("blocks", "attn", f"{name}_bias"), layer + f"self_attn.{name}_proj.bias", "copy", 0))
    if cfg.qk_norm:
        for name in "qk":
            rules.append(Rule(("blocks", "attn", f"{name}_norm", "scale"), layer + f"self_attn.{name}_norm.weight",
                              "copy", 0))
    rules.append(Rule(("blocks", "attn", "o"), layer + "self_attn.o_proj.weight", "linear", 2))
    if cfg.attn_out_bias:
        rules.append(Rule(("blocks", "attn", "o_bias"), layer + "self_attn.o_proj.bias", "copy", 0))
    if cfg.is_moe:
        moe = layer + "block_sparse_moe."
        rules += [
            Rule(("blocks", "mlp", "router"), moe + "gate.weight", "linear"),
            Rule(("blocks", "mlp", "gate"), moe + "experts.{e}.w1.weight", "linear"),
            Rule(("blocks", "mlp", "up"), moe + "experts.{e}.w3.weight", "linear"),
            Rule(("blocks", "mlp", "down"), moe + "experts.{e}.w2.weight", "linear"),
        ]
    else:
        for name in ("gate", "up", "down"):
            rules.append(Rule(("blocks", "mlp", name), layer + f"mlp.{name}_proj.weight", "linear"))
            if cfg.mlp_bias:
                rules.append(Rule(("blocks", "mlp", f"{name}_bias"), layer + f"mlp.{name}_proj.bias", "copy", 0))
    return rules + _head_rules(cfg)


def _gpt2_rules(cfg: ModelConfig, prefix: str) -> list[Rule]:
    layer = prefix + "h.{i}."
    rules = [
        Rule(("embed",), prefix + "wte.weight", "copy"),
        Rule(("pos_embed",), prefix + "wpe.weight", "copy"),
        Rule(("final_norm", "scale"), prefix + "ln_f.weight", "copy", 0),
        Rule(("final_norm", "bias"), prefix + "ln_f.bias", "copy", 0),
        Rule(("blocks", "attn", "o"), layer + "attn.c_proj.weight", "copy", 2),
        Rule(("blocks", "attn", "o_bias"), layer + "attn.c_proj.bias", "copy", 0),
        Rule(("blocks", "mlp", "up"), layer + "mlp.c_fc.weight", "copy"),
        Rule(("blocks", "mlp", "up_bias"), layer + "mlp.c_fc.bias", "copy", 0),
        Rule(("blocks", "mlp", "down"), layer + "mlp.c_proj.weight", "copy"),
        Rule(("blocks", "mlp", "down_bias"), layer + "mlp.c_proj.bias", "copy", 0),
    ]
    for norm, hf in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
        rules.append(Rule(("blocks", norm, "scale"), layer + f"{hf}.weight", "copy", 0))
        rules.append(Rule(("blocks", norm, "bias"), layer + f"{hf}.bias", "copy", 0))
    for j, name in enumerate("qkv"):
        rules.append(Rule(("blocks", "attn", name), layer + "attn.c_attn.weight", "copy", 1, (j, 3)))
        rules.append(Rule(("blocks", "attn", f"{name}_bias"), layer + "attn.c_attn.bias", "copy", 0, (j, 3)))
    return rules + _head_rules(cfg)


def _head_rules(cfg: ModelConfig) -> list[Rule]:
    if cfg.head == "lm" and not cfg.tie_embeddings:
        return [Rule(("lm_head",), "lm_head.weight", "linear")]
    if cfg.head == "value":
        return [Rule(("value_head",), "lm_head.weight", "linear")]
    if cfg.head == "scalar":
        return [Rule(("score_head",), "score.weight", "linear")]
    return []


def rules_for(cfg: ModelConfig, checkpoint_keys: Callable[[str], bool] | None = None) -> list[Rule]:
    """The table for `cfg`. `checkpoint_keys(key) -> bool` tells which GPT-2 prefix a checkpoint uses."""
    if cfg.family == "gpt2":
        prefix = "transformer."
        if checkpoint_keys is not None and not checkpoint_keys("transformer.wte.weight") and checkpoint_keys(
                "wte.weight"):
            prefix = ""
        return _gpt2_rules(cfg, prefix)
    return _llama_rules(cfg)


# Tensors that checkpoints carry but that hold nothing we need (buffers, or a copy of a tied embedding).
IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias")
