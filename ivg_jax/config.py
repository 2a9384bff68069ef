"""One architecture description for every supported family, and its translation from/to HF configs.

`ModelConfig` is frozen and hashable: it is static data of the jitted programs (part of the NNX graphdef).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ivg_jax.errors import UnsupportedError

Family = Literal["gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]
Head = Literal["lm", "value", "scalar"]
SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
# Gemma-3's text-only checkpoints say "gemma3_text"; the family is "gemma3".
_FAMILY_OF_MODEL_TYPE = {"gemma3_text": "gemma3"}
ACTIVATIONS = ("silu", "swish", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rotary-frequency rescaling. `kind` is "linear" or "llama3" (Llama-3.1's wavelength-dependent rule)."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and options of a decoder-only transformer (glossary: D model, N heads, K kv heads, H head dim,
    F ffw dim, V vocab, E experts)."""

    family: Family
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    norm: Literal["rms", "layer"] = "rms"
    norm_eps: float = 1e-5
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    activation: str = "silu"
    attn_bias: bool = False  # biases of the q, k, v projections
    attn_out_bias: bool = False
    qk_norm: bool = False  # RMS norm of each head's query and key before rotary (Qwen3)
    mlp_bias: bool = False
    positions: Literal["rope", "learned"] = "rope"
    max_positions: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None  # which blocks the window applies to (None: every block)
    local_rope_theta: float | None = None  # the windowed blocks' rotary base, unscaled (Gemma-3's local layers)
    embed_scale: bool = False  # embeddings times sqrt(D), rounded to the model dtype (Gemma)
    norm_offset: bool = False  # RMSNorm scales by 1 + weight, in float32 (Gemma)
    sandwich_norms: bool = False  # attention and MLP outputs are normed before the residual add (Gemma-2/3)
    query_scale: float | None = None  # attention score scale (default head_dim ** -0.5)
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap) before the mask (Gemma-2)
    logit_softcap: float | None = None  # the LM head's logits, likewise (Gemma-2)
    n_experts: int = 0
    experts_per_token: int = 0
    tie_embeddings: bool = False
    head: Head = "lm"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise UnsupportedError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}; "
                "grouped-query attention needs whole groups")
        if self.head not in ("lm", "value", "scalar"):
            raise UnsupportedError(f"head={self.head!r}; choose 'lm', 'value' or 'scalar'")
        if self.activation not in ACTIVATIONS:
            raise UnsupportedError(f"activation {self.activation!r} is not supported; supported: {ACTIVATIONS}")
        if self.sliding_layers is not None and len(self.sliding_layers) != self.n_layers:
            raise UnsupportedError(f"sliding_layers names {len(self.sliding_layers)} blocks; the model has "
                                   f"{self.n_layers}")

    @property
    def layers_differ(self) -> bool:
        """Whether blocks differ in their attention (window, rotary base): the block stack then reads its layer's
        row of those per-layer settings (`window_of_layers`, `rope_inverse_frequencies`)."""
        return self.sliding_window is not None and self.sliding_layers is not None and len(set(self.sliding_layers)) > 1

    def window_of_layers(self) -> tuple[int | None, ...]:
        """Each block's sliding window (None: full attention)."""
        windowed = self.sliding_layers or (True,) * self.n_layers
        return tuple(self.sliding_window if w else None for w in windowed)

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def flops_per_token(self) -> int:
        """Multiply-adds x 2 of one token's forward through the weights (projections, the active experts' MLPs
        and router, the head), the usual 2·N measure of a model's cost; attention over the context is left out
        (small at the lengths decoded here). Compares models of different sizes: weak-to-strong compute."""
        d, h = self.d_model, self.head_dim
        attention = d * h * (self.n_heads * 2 + self.n_kv_heads * 2)  # q and o; k and v
        mlp = d * self.d_ff * (3 if self.mlp == "swiglu" else 2)
        if self.is_moe:
            mlp = mlp * self.experts_per_token + d * self.n_experts
        head = d * (1 if self.head == "scalar" else self.vocab_size)
        return 2 * (self.n_layers * (attention + mlp) + head)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _eos_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope_from_hf(cfg: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """Reads both the transformers-5 `rope_parameters` and the older `rope_theta` + `rope_scaling` spellings."""
    params = dict(cfg.get("rope_parameters") or {})
    legacy = cfg.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    merged = {**legacy, **params}
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind == "linear":
        return theta, RopeScaling("linear", float(merged["factor"]))
    if kind == "llama3":
        return theta, RopeScaling(
            "llama3",
            float(merged["factor"]),
            float(merged.get("low_freq_factor", 1.0)),
            float(merged.get("high_freq_factor", 4.0)),
            int(merged.get("original_max_position_embeddings", 8192)),
        )
    raise UnsupportedError(
        f"rope scaling type {kind!r} in config.json is not supported; supported: default, linear, llama3")


def _head_from_hf(cfg: dict[str, Any]) -> Head:
    if "ivg_jax_head" in cfg:
        return cfg["ivg_jax_head"]
    archs = cfg.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "scalar"
    return "lm"


def config_from_hf(cfg: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Translates a transformers `config.json` dict. Raises `UnsupportedError` naming the model type."""
    model_type = cfg.get("model_type")
    if model_type == "gemma3":
        raise UnsupportedError(
            f"{source}: a Gemma-3 image-text checkpoint (model_type 'gemma3'); ivg-jax reads Gemma-3's text model "
            "(Gemma3ForCausalLM, model_type 'gemma3_text', e.g. gemma-3-1b) — use a text-only checkpoint")
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = cfg.get("architectures")
        raise UnsupportedError(
            f"{source}: unsupported architecture model_type={model_type!r} (architectures={archs}); "
            f"ivg-jax implements {', '.join(SUPPORTED_MODEL_TYPES)}. Convert the model to one of these "
            "families or open an issue for the architecture.")
    common = dict(
        vocab_size=int(cfg["vocab_size"]),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=_eos_ids(cfg.get("eos_token_id")),
        pad_token_id=cfg.get("pad_token_id"),
        head=_head_from_hf(cfg),
    )
    if model_type == "gpt2":
        d = int(cfg["n_embd"])
        n = int(cfg["n_head"])
        if not cfg.get("scale_attn_weights", True) or cfg.get("scale_attn_by_inverse_layer_idx", False) \
                or cfg.get("reorder_and_upcast_attn", False):
            raise UnsupportedError(
                f"{source}: GPT-2 attention-scaling variants (scale_attn_weights=False, "
                "scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn) are not supported")
        return ModelConfig(
            family="gpt2", d_model=d, n_layers=int(cfg["n_layer"]), n_heads=n, n_kv_heads=n, head_dim=d // n,
            d_ff=int(cfg.get("n_inner") or 4 * d), norm="layer", norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
            mlp="gelu", activation=cfg.get("activation_function", "gelu_new"), attn_bias=True, attn_out_bias=True,
            mlp_bias=True, positions="learned", max_positions=int(cfg.get("n_positions", 1024)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", True)), **common)
    if model_type in ("gemma", "gemma2", "gemma3_text"):
        return _gemma_from_hf(cfg, model_type, source, common)
    d = int(cfg["hidden_size"])
    n = int(cfg["num_attention_heads"])
    theta, scaling = _rope_from_hf(cfg)
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedError(f"{source}: hidden_act={act!r} is not supported for {model_type}; expected 'silu'")
    sliding = cfg.get("sliding_window") if model_type in ("mistral", "mixtral") else None
    if model_type in ("qwen2", "qwen3") and cfg.get("use_sliding_window"):
        # Qwen's window applies from layer `max_window_layers` up only; checkpoints ship with it off.
        raise UnsupportedError(f"{source}: use_sliding_window=true (Qwen's per-layer sliding window) is not "
                               "supported; set it to false (the released checkpoints' setting)")
    # Qwen2 always has q/k/v biases and no output bias; the others take `attention_bias` for all four.
    qkv_bias = True if model_type == "qwen2" else bool(cfg.get("attention_bias", False))
    out_bias = False if model_type == "qwen2" else bool(cfg.get("attention_bias", False))
    return ModelConfig(
        family=model_type, d_model=d, n_layers=int(cfg["num_hidden_layers"]), n_heads=n,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n), head_dim=int(cfg.get("head_dim") or d // n),
        d_ff=int(cfg["intermediate_size"]), norm="rms", norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        mlp="swiglu", activation="silu", attn_bias=qkv_bias, attn_out_bias=out_bias,
        qk_norm=model_type == "qwen3", mlp_bias=bool(cfg.get("mlp_bias", False)),
        positions="rope", max_positions=int(cfg.get("max_position_embeddings", 4096)), rope_theta=theta,
        rope_scaling=scaling, sliding_window=int(sliding) if sliding else None,
        n_experts=int(cfg.get("num_local_experts", 0)) if model_type == "mixtral" else 0,
        experts_per_token=int(cfg.get("num_experts_per_tok", 0)) if model_type == "mixtral" else 0,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), **common)


def _gemma_from_hf(cfg: dict[str, Any], model_type: str, source: str, common: dict) -> ModelConfig:
    """Gemma (1), Gemma-2 (soft-capped scores and logits, every other block windowed) and Gemma-3's text model
    (q/k norms, five windowed blocks with their own rotary base to each global one). All scale embeddings by
    sqrt(D), norm with 1 + weight, and gate the MLP with tanh-GELU."""
    family = _FAMILY_OF_MODEL_TYPE.get(model_type, model_type)
    n_layers = int(cfg["num_hidden_layers"])
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ACTIVATIONS:
        raise UnsupportedError(f"{source}: hidden_activation={act!r} is not supported; supported: {ACTIVATIONS}")
    if cfg.get("use_bidirectional_attention"):
        raise UnsupportedError(f"{source}: use_bidirectional_attention=true (an encoder) is not supported; "
                               "ivg-jax decodes causal models")
    local_theta, sliding_layers, window = None, None, None
    if family == "gemma":
        theta, scaling = _rope_from_hf(cfg)
    else:
        window = cfg.get("sliding_window", 4096)  # absent keys take transformers' defaults
        period = 2 if family == "gemma2" else int(cfg.get("sliding_window_pattern", 6))
        kinds = cfg.get("layer_types") or ["sliding_attention" if (i + 1) % period else "full_attention"
                                           for i in range(n_layers)]
        sliding_layers = tuple(k == "sliding_attention" for k in kinds)
        params = cfg.get("rope_parameters") or {}
        if family == "gemma3" and "full_attention" in params:  # transformers 5: one rotary per layer kind
            theta, scaling = _rope_from_hf({"rope_parameters": params["full_attention"]})
            local_theta = float(params.get("sliding_attention", {}).get("rope_theta", 10000.0))
        else:
            theta, scaling = _rope_from_hf({**cfg, "rope_theta": cfg.get("rope_theta", 1e6 if family == "gemma3"
                                                                           else 10000.0)})
            local_theta = float(cfg.get("rope_local_base_freq", 10000.0)) if family == "gemma3" else None
    d = int(cfg["hidden_size"])
    n = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or d // n)
    scalar = cfg.get("query_pre_attn_scalar", 256)
    bias = bool(cfg.get("attention_bias", False))
    return ModelConfig(
        family=family, d_model=d, n_layers=n_layers, n_heads=n, n_kv_heads=int(cfg.get("num_key_value_heads") or n),
        head_dim=head_dim, d_ff=int(cfg["intermediate_size"]), norm="rms",
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), mlp="swiglu", activation=act, attn_bias=bias,
        attn_out_bias=bias, qk_norm=family == "gemma3",
        positions="rope", max_positions=int(cfg.get("max_position_embeddings", 8192)), rope_theta=theta,
        rope_scaling=scaling, sliding_window=int(window) if window else None,
        sliding_layers=sliding_layers if window else None, local_rope_theta=local_theta, embed_scale=True,
        norm_offset=True, sandwich_norms=family != "gemma",
        query_scale=float(scalar) ** -0.5 if scalar and family != "gemma" else None,
        attn_softcap=_cap(cfg.get("attn_logit_softcapping", 50.0 if family == "gemma2" else None)),
        logit_softcap=_cap(cfg.get("final_logit_softcapping", 30.0 if family == "gemma2" else None)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)), **common)


def _cap(value) -> float | None:
    return float(value) if value else None


_HF_ARCH = {"gpt2": "GPT2", "llama": "Llama", "mistral": "Mistral", "mixtral": "Mixtral", "qwen2": "Qwen2",
            "qwen3": "Qwen3", "gemma": "Gemma", "gemma2": "Gemma2", "gemma3": "Gemma3"}
_MODEL_TYPE_OF_FAMILY = {family: model_type for model_type, family in _FAMILY_OF_MODEL_TYPE.items()}


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The `config.json` transformers needs to load an exported model (the inverse of `config_from_hf`)."""
    head_suffix = "ForSequenceClassification" if cfg.head == "scalar" else "ForCausalLM"
    if cfg.family == "gpt2":
        head_suffix = "ForSequenceClassification" if cfg.head == "scalar" else "LMHeadModel"
    out: dict[str, Any] = {
        "architectures": [_HF_ARCH[cfg.family] + head_suffix],
        "model_type": _MODEL_TYPE_OF_FAMILY.get(cfg.family, cfg.family),
        "vocab_size": cfg.vocab_size,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else
        (cfg.eos_token_ids[0] if cfg.eos_token_ids else None),
        "pad_token_id": cfg.pad_token_id,
        "tie_word_embeddings": cfg.tie_embeddings,
        "ivg_jax_head": cfg.head,
    }
    if cfg.head == "scalar":
        out["num_labels"] = 1
    if cfg.family == "gpt2":
        out.update(n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
                   n_positions=cfg.max_positions, layer_norm_epsilon=cfg.norm_eps,
                   activation_function=cfg.activation)
        return out
    rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope.update(rope_type=s.kind, factor=s.factor)
        if s.kind == "llama3":
            rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                        original_max_position_embeddings=s.original_max_positions)
    if cfg.family.startswith("gemma"):
        return {**out, **_gemma_to_hf(cfg, rope)}
    out.update(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
               num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.d_ff,
               rms_norm_eps=cfg.norm_eps, hidden_act="silu", max_position_embeddings=cfg.max_positions,
               rope_parameters=rope, rope_theta=cfg.rope_theta)
    if cfg.family in ("llama", "qwen3"):
        out.update(attention_bias=cfg.attn_bias, mlp_bias=cfg.mlp_bias)
    elif cfg.family == "qwen2":
        out.update(use_sliding_window=False)
    else:
        out["sliding_window"] = cfg.sliding_window
    if cfg.family == "mixtral":
        out.update(num_local_experts=cfg.n_experts, num_experts_per_tok=cfg.experts_per_token)
    return out


def _gemma_to_hf(cfg: ModelConfig, rope: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(
        hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.d_ff,
        rms_norm_eps=cfg.norm_eps, hidden_activation=cfg.activation, max_position_embeddings=cfg.max_positions,
        attention_bias=cfg.attn_bias, rope_parameters=rope, rope_theta=cfg.rope_theta)
    if cfg.family == "gemma":
        return out
    scalar = (cfg.query_scale or cfg.head_dim ** -0.5) ** -2  # transformers' config holds it as an int
    out.update(sliding_window=cfg.sliding_window, query_pre_attn_scalar=int(round(scalar)),
               attn_logit_softcapping=cfg.attn_softcap, final_logit_softcapping=cfg.logit_softcap)
    if cfg.sliding_layers is not None:
        out["layer_types"] = ["sliding_attention" if w else "full_attention" for w in cfg.sliding_layers]
    if cfg.family == "gemma3":
        out["rope_parameters"] = {"full_attention": rope, "sliding_attention": {
            "rope_type": "default", "rope_theta": cfg.local_rope_theta or cfg.rope_theta}}
        out.pop("rope_theta")
    return out


GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")


def config_from_gguf(meta: dict[str, Any], source: str, tied: bool, vocab_size: int) -> ModelConfig:
    """Builds the config from GGUF metadata (`{arch}.*` keys) of a llama, qwen2 or qwen3 architecture file.

    `tied`: the file has no `output.weight`, so the LM head reuses the token embedding; `vocab_size`: rows of
    the token embedding (files do not always carry `{arch}.vocab_size`).
    """
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedError(
            f"{source}: GGUF architecture {arch!r} is not supported; ivg-jax reads {', '.join(GGUF_ARCHITECTURES)} "
            "GGUF files (Llama, SmolLM2, Mistral exported as llama; Qwen2/2.5; Qwen3). Use the model's HF "
            "safetensors checkpoint instead.")
    if meta.get(f"{arch}.expert_count"):
        raise UnsupportedError(
            f"{source}: mixture-of-experts GGUF files are not supported; load the HF safetensors checkpoint")
    d = int(meta[f"{arch}.embedding_length"])
    n = int(meta[f"{arch}.attention.head_count"])
    n_kv = int(meta.get(f"{arch}.attention.head_count_kv", n))
    head_dim = int(meta.get(f"{arch}.attention.key_length", d // n))
    eos = meta.get("tokenizer.ggml.eos_token_id")
    scaling = None
    if meta.get(f"{arch}.rope.scaling.type") == "linear":
        scaling = RopeScaling("linear", float(meta[f"{arch}.rope.scaling.factor"]))
    sliding = meta.get(f"{arch}.attention.sliding_window") if arch == "llama" else None
    family = "mistral" if sliding else ("llama" if arch == "llama" else arch)
    return ModelConfig(
        family=family, vocab_size=vocab_size,
        d_model=d, n_layers=int(meta[f"{arch}.block_count"]), n_heads=n, n_kv_heads=n_kv, head_dim=head_dim,
        d_ff=int(meta[f"{arch}.feed_forward_length"]), norm="rms",
        norm_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)), mlp="swiglu",
        attn_bias=arch == "qwen2", qk_norm=arch == "qwen3",
        positions="rope", max_positions=int(meta.get(f"{arch}.context_length", 4096)),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)), rope_scaling=scaling,
        sliding_window=int(sliding) if sliding else None,
        tie_embeddings=tied, bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=_eos_ids(eos), pad_token_id=meta.get("tokenizer.ggml.padding_token_id"))
