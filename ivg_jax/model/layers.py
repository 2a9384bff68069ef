"""Transformer building blocks as Flax NNX modules.

Weights are `nnx.Param`s whose `axes` metadata names their logical axes (see `ivg_jax.sharding`); einsum
letters follow the glossary: B batch, T query length, S cache length, N query heads, K kv heads, G heads per
kv group, H head dim, D model dim, F ffw dim, V vocab, E experts. Docstring shapes write query and KV heads as
Nq and Nkv, since K is the decoder's candidates per beam (glossary in `ivg_jax.decoding.engine`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ivg_jax.config import ModelConfig
from ivg_jax.model.bits import cpu_16bit
from ivg_jax.model.quant import dense, matmul_f32, matrix, one_row_as_two

# Finite, so rows with no visible key (padding queries) give a uniform softmax instead of NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def mm(x: jax.Array, w) -> jax.Array:
    """x @ w (w [in, out], an array or an `Int8Weight`) accumulated in float32, returned in x's dtype (what bf16
    matmuls do on accelerators; on XLA:CPU a bf16-output dot takes a slow path, ~2.5x slower than this for the
    MLP at decode shapes)."""
    return matmul_f32(x, w).astype(x.dtype)


def einsum(spec: str, a: jax.Array, b: jax.Array, out_dtype=None) -> jax.Array:
    """`jnp.einsum` accumulated in float32, returned in `out_dtype` (default: a's dtype)."""
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype or a.dtype)


def _param(rngs: nnx.Rngs, shape, dtype, axes, scale: float = 0.02, init: str = "normal") -> nnx.Param:
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (scale * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, axes=axes)


class Norm(nnx.Module):
    """RMSNorm (Llama family; Gemma's scales by 1 + weight in float32) or LayerNorm (GPT-2), computed in float32
    like the HF references."""

    def __init__(self, cfg: ModelConfig, dtype, *, rngs: nnx.Rngs, size: int | None = None):
        """Over the last axis, of `size` (default D; H for Qwen3's per-head query / key norms)."""
        self.kind = cfg.norm
        self.eps = cfg.norm_eps
        self.offset = cfg.norm_offset
        self.scale = _param(rngs, (size or cfg.d_model,), dtype, ("norm",), init="ones")
        if cfg.norm == "layer":
            self.bias = _param(rngs, (size or cfg.d_model,), dtype, ("norm",), init="zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.kind == "rms":
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
            if self.offset:
                return (y * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)
            return self.scale[...] * y.astype(x.dtype)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


def rope_inverse_frequencies(cfg: ModelConfig, local: bool = False) -> np.ndarray:
    """[H/2] float32 inverse frequencies, with linear or Llama-3 rescaling applied (as transformers does).
    `local`: those of the windowed blocks where they have a base of their own (Gemma-3; never rescaled)."""
    h = cfg.head_dim
    local = local and cfg.local_rope_theta is not None
    theta = cfg.local_rope_theta if local else cfg.rope_theta
    inv = (1.0 / (np.float32(theta) ** (np.arange(0, h, 2, dtype=np.float32) / np.float32(h))))
    inv = inv.astype(np.float32)
    s = cfg.rope_scaling
    if s is None or local:
        return inv
    if s.kind == "linear":
        return (inv / np.float32(s.factor)).astype(np.float32)
    low_wavelen = s.original_max_positions / s.low_freq_factor
    high_wavelen = s.original_max_positions / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_positions / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates halves (HF's rotate_half layout). x: [B, T, heads, H]; positions: [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


FULL_WINDOW = 2 ** 30  # a block without a window, in a stack where other blocks have one


def layer_attention(cfg: ModelConfig) -> tuple[np.ndarray | None, np.ndarray]:
    """Each block's rotary inverse frequencies [layers, H/2] (None without rotary) and sliding window [layers]
    (int32; a window longer than any sequence where a block attends to everything)."""
    windows = cfg.window_of_layers()
    inv = None
    if cfg.positions == "rope":
        inv = np.stack([rope_inverse_frequencies(cfg, local=w is not None) for w in windows])
    return inv, np.array([w if w is not None else FULL_WINDOW for w in windows], np.int32)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """cap * tanh(x / cap) (Gemma-2's bound on attention scores and logits); x unchanged without a cap."""
    return x if cap is None else jnp.tanh(x / cap) * cap


def visible(q_pos: jax.Array, k_pos: jax.Array, window) -> jax.Array:
    """[B, T, S] which keys each query sees: a real key, not in the future, inside the sliding window (an int,
    a traced int32 scalar: the block's row of `layer_attention`, or None)."""
    q = q_pos[:, :, None]
    k = k_pos[:, None, :]
    ok = (k >= 0) & (k <= q)
    if window is not None:
        ok &= (q - k) < window
    return ok


def _read_prefix(probs: jax.Array, dtype, *, by_prompt: tuple[int, int], prefix_v: jax.Array) -> jax.Array:
    """probs [B, Nkv, G, T, Sp] over a shared prompt's slots, prefix_v [P, Nkv, Sp, H] -> [B, Nkv, G, T, H].

    The dot's batch axes (prompt, kv head) lead both operands: with the prompt's rows between them, XLA:CPU
    lowers a bf16 x bf16 -> f32 dot to a DotThunk that cannot run it (`UNIMPLEMENTED ... BF16 x BF16 = F32`,
    any P > 1, Sp > 1), so bf16 decoding of several prompts failed."""
    p, r = by_prompt
    by_head = probs.reshape(p, r, *probs.shape[1:]).transpose(0, 2, 1, 3, 4, 5)  # [P, Nkv, B/P, G, T, Sp]
    out = einsum("pkrgts,pksh->pkrgth", by_head, prefix_v, dtype)
    return out.transpose(0, 2, 1, 3, 4, 5).reshape(p * r, out.shape[1], *out.shape[3:])


def _dense_heads(x: jax.Array, w) -> jax.Array:
    """x [B, T, D] @ w [D, heads, H] -> [B, T, heads, H]."""
    return mm(x, matrix(w, 1)).reshape(*x.shape[:2], *w.shape[1:])


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype, *, rngs: nnx.Rngs):
        d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.cfg = cfg
        self.q = _param(rngs, (d, n, h), dtype, ("embed", "q_heads", "head_dim"))
        self.k = _param(rngs, (d, k, h), dtype, ("embed", "kv_heads", "head_dim"))
        self.v = _param(rngs, (d, k, h), dtype, ("embed", "kv_heads", "head_dim"))
        self.o = _param(rngs, (n, h, d), dtype, ("q_heads", "head_dim", "embed"))
        if cfg.attn_bias:
            self.q_bias = _param(rngs, (n, h), dtype, ("q_heads", "head_dim"), init="zeros")
            self.k_bias = _param(rngs, (k, h), dtype, ("kv_heads", "head_dim"), init="zeros")
            self.v_bias = _param(rngs, (k, h), dtype, ("kv_heads", "head_dim"), init="zeros")
        if cfg.attn_out_bias:
            self.o_bias = _param(rngs, (d,), dtype, ("embed",), init="zeros")
        if cfg.qk_norm:
            self.q_norm = Norm(cfg, dtype, rngs=rngs, size=h)
            self.k_norm = Norm(cfg, dtype, rngs=rngs, size=h)

    def project(self, x: jax.Array, positions: jax.Array, inv_freq) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: [B, T, D] -> q [B, T, Nq, H], k and v [B, T, Nkv, H] (rotary already applied)."""
        # Plain 2-D matmuls on the flattened head axes: XLA:CPU would otherwise copy weights into a new layout.
        q, k, v = (_dense_heads(x, w.get_value()) for w in (self.q, self.k, self.v))
        if self.cfg.attn_bias:
            q, k, v = q + self.q_bias[...], k + self.k_bias[...], v + self.v_bias[...]
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.cfg.positions == "rope":
            q = apply_rope(q, positions, inv_freq)
            k = apply_rope(k, positions, inv_freq)
        return q, k, v

    def __call__(self, x, positions, inv_freq, cache_k=None, cache_v=None, cache_pos=None, prefix=None,
                 write_at=None, window=None):
        """Attends the T new tokens to the cached slots and to each other, inside this block's sliding `window`.

        x: [B, T, D]; positions: [B, T] (-1 = padding); cache_k/v: [B, Nkv, S, H] or None; cache_pos: [B, S].
        `prefix`: (k, v [P, Nkv, Sp, H], pos [P, Sp]), slots every one of a prompt's B/P consecutive rows reads
        (its prompt, held once), or None. Returns the block output [B, T, D] and the new k, v [B, Nkv, T, H] for
        the caller to write. Caches are read in place, never concatenated with the new keys: scores are joined.

        `write_at` (the cache's next slot; a layer's own cache buffer): the new k, v are written into cache_k/v
        at slots [write_at, write_at + T) first, and the updated buffers are returned instead. Reading a buffer
        that a later write updates makes XLA copy it to keep the read safe, when nothing orders the two (the
        write depends only on the projections); reading the written buffer needs no copy. The new slots stay
        invisible to the cache segment (`cache_pos` is the old one), so the result is the same.
        """
        cfg = self.cfg
        b, t, _ = x.shape
        g = cfg.n_heads // cfg.n_kv_heads
        q, k, v = self.project(x, positions, inv_freq)
        if write_at is not None:
            cache_k, cache_v = (jax.lax.dynamic_update_slice(held, new.transpose(0, 2, 1, 3).astype(held.dtype),
                                                             (0, 0, write_at, 0))
                                for held, new in ((cache_k, k), (cache_v, v)))
        scale = cfg.query_scale if cfg.query_scale is not None else cfg.head_dim ** -0.5
        q = q.reshape(b, t, cfg.n_kv_heads, g, cfg.head_dim) * jnp.asarray(scale, q.dtype)
        heads = (b, cfg.n_kv_heads, g, t)
        # The keys in slot order: the shared prompt, the row's cache, the new tokens. Each segment is (scores
        # [B, Nkv, G, T, S_i], mask [B, T, S_i], its values read by its probabilities -> [B, Nkv, G, T, H]).
        # Each dot writes in its natural (b, k, g, t, h) order and one small transpose follows: asking the dot
        # for btkgh directly made XLA:CPU's batched dot over the cache ~10x slower at decode shapes.
        segments = []
        if prefix is not None:
            prefix_k, prefix_v, prefix_pos = prefix
            n_prompts = prefix_pos.shape[0]
            by_prompt = (n_prompts, b // n_prompts)  # a prompt's rows are consecutive
            grouped = q.reshape(*by_prompt, *q.shape[1:])  # [P, B/P, T, Nkv, G, H]
            segments.append((
                einsum("prtkgh,pksh->prkgts", grouped, prefix_k, jnp.float32).reshape(*heads, -1),
                visible(positions, jnp.repeat(prefix_pos, by_prompt[1], axis=0), window),
                functools.partial(_read_prefix, by_prompt=by_prompt, prefix_v=prefix_v)))
        if cache_k is not None:
            segments.append((einsum("btkgh,bksh->bkgts", q, cache_k, jnp.float32),
                             visible(positions, cache_pos, window),
                             lambda probs, dtype: einsum("bkgts,bksh->bkgth", probs, cache_v, dtype)))
        segments.append((einsum("btkgh,bskh->bkgts", q, k, jnp.float32),
                         visible(positions, positions, window),
                         lambda probs, dtype: einsum("bkgts,bskh->bkgth", probs, v, dtype)))
        scores = softcap(jnp.concatenate([seg[0] for seg in segments], axis=-1), cfg.attn_softcap)
        mask = jnp.concatenate([seg[1] for seg in segments], axis=-1)
        scores = jnp.where(mask[:, None, None], scores, MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        ends = np.cumsum([seg[0].shape[-1] for seg in segments])[:-1]
        dtype = jnp.float32 if len(segments) > 1 else None  # several segments' outputs are summed in float32
        out = sum(read(part, dtype) for (_, _, read), part in zip(segments, jnp.split(probs, ends, axis=-1)))
        out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, cfg.n_heads, cfg.head_dim).astype(x.dtype)
        y = mm(out.reshape(b, t, -1), matrix(self.o.get_value(), 2))
        if cfg.attn_out_bias:
            y = y + self.o_bias[...]
        if write_at is not None:
            return y, cache_k, cache_v
        return y, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


def activation(name: str):
    return _ACTIVATIONS[name]  # names are checked when the ModelConfig is built


class MLP(nnx.Module):
    """SwiGLU (Llama family) or a two-layer GELU MLP with biases (GPT-2)."""

    def __init__(self, cfg: ModelConfig, dtype, *, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        self.cfg = cfg
        if cfg.mlp == "swiglu":
            self.gate = _param(rngs, (d, f), dtype, ("embed", "mlp"))
        self.up = _param(rngs, (d, f), dtype, ("embed", "mlp"))
        self.down = _param(rngs, (f, d), dtype, ("mlp", "embed"))
        if cfg.mlp_bias:
            if cfg.mlp == "swiglu":
                self.gate_bias = _param(rngs, (f,), dtype, ("mlp",), init="zeros")
            self.up_bias = _param(rngs, (f,), dtype, ("mlp",), init="zeros")
            self.down_bias = _param(rngs, (d,), dtype, ("embed",), init="zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation(self.cfg.activation)
        up = mm(x, self.up.get_value())
        if self.cfg.mlp_bias:
            up = up + self.up_bias[...]
        if self.cfg.mlp == "swiglu":
            gate = mm(x, self.gate.get_value())
            if self.cfg.mlp_bias:
                gate = gate + self.gate_bias[...]
            h = act(gate) * up
        else:
            h = act(up)
        y = mm(h, self.down.get_value())
        if self.cfg.mlp_bias:
            y = y + self.down_bias[...]
        return y


class MoE(nnx.Module):
    """Sparse mixture of SwiGLU experts with top-k routing (Mixtral): softmax over all router logits in float32,
    keep the top k, renormalise them to sum to one.

    Every expert is evaluated densely and unselected ones get weight 0: exact, and fine for guide-sized models
    and decode batches where every expert's weights are read anyway; a grouped (ragged) matmul would cut the
    prefill FLOPs of large MoE bases by E/k.
    """

    def __init__(self, cfg: ModelConfig, dtype, *, rngs: nnx.Rngs):
        d, f, e = cfg.d_model, cfg.d_ff, cfg.n_experts
        self.cfg = cfg
        self.router = _param(rngs, (d, e), dtype, ("embed", "experts"))
        self.gate = _param(rngs, (e, d, f), dtype, ("experts", "embed", "mlp"))
        self.up = _param(rngs, (e, d, f), dtype, ("experts", "embed", "mlp"))
        self.down = _param(rngs, (e, f, d), dtype, ("experts", "mlp", "embed"))

    def routing_weights(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> [..., E] float32: renormalised top-k softmax weights, zero for unselected experts."""
        logits = einsum("...d,de->...e", x, self.router[...], jnp.float32)
        probs = jax.nn.softmax(logits, axis=-1)
        top, idx = jax.lax.top_k(probs, self.cfg.experts_per_token)
        top = top / jnp.sum(top, axis=-1, keepdims=True)
        onehot = jax.nn.one_hot(idx, self.cfg.n_experts, dtype=jnp.float32)  # [..., k, E]
        return jnp.einsum("...k,...ke->...e", top, onehot)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up, down = (dense(w.get_value()) for w in (self.gate, self.up, self.down))

        def experts(x):  # x [..., D] -> [..., D]
            weights = self.routing_weights(x).astype(x.dtype)
            h = jax.nn.silu(einsum("...d,edf->...ef", x, gate)) * einsum("...d,edf->...ef", x, up)
            return einsum("...ef,efd->...d", h * weights[..., None], down)

        return one_row_as_two(experts, x) if cpu_16bit(gate.dtype) else experts(x)


class Block(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(.)); with `sandwich_norms` (Gemma-2/3) each
    sublayer's output is normed too before it is added."""

    def __init__(self, cfg: ModelConfig, dtype, *, rngs: nnx.Rngs):
        self.attn_norm = Norm(cfg, dtype, rngs=rngs)
        self.attn = Attention(cfg, dtype, rngs=rngs)
        self.mlp_norm = Norm(cfg, dtype, rngs=rngs)
        self.mlp = MoE(cfg, dtype, rngs=rngs) if cfg.is_moe else MLP(cfg, dtype, rngs=rngs)
        self.sandwich = cfg.sandwich_norms
        if cfg.sandwich_norms:
            self.attn_post_norm = Norm(cfg, dtype, rngs=rngs)
            self.mlp_post_norm = Norm(cfg, dtype, rngs=rngs)

    def __call__(self, x, positions, inv_freq, cache_k=None, cache_v=None, cache_pos=None, prefix=None,
                 write_at=None, window=None):
        y, k, v = self.attn(self.attn_norm(x), positions, inv_freq, cache_k, cache_v, cache_pos, prefix, write_at,
                            window)
        x = x + (self.attn_post_norm(y) if self.sandwich else y)
        y = self.mlp(self.mlp_norm(x))
        x = x + (self.mlp_post_norm(y) if self.sandwich else y)
        return x, k, v
