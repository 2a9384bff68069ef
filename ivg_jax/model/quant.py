"""Int8 weight-only quantization: the projection weights held as int8 with a float scale per output channel.

Decoding a small batch reads every weight once per token, so its speed is the memory bandwidth over the bytes
of the weights: int8 holds a float32 weight in a quarter of them (a bfloat16 one in half). Activations, norms,
biases, the KV cache and every accumulation stay in the model's dtype / float32; only the matmuls' weight
operand is int8, dequantized on the fly: `x @ (values * scale) == (x @ values) * scale` for a scale per output
column, so the scale is applied once to the product, not to the weight.

Symmetric, per output channel (absmax / 127): the error of a weight is at most half a step, `scale / 2`.
Which weights: every projection of the blocks (q, k, v, o, the MLP's or the experts'), the vocab heads, and the
token embedding (scaled per vocab row, so a lookup and the tied head read the same int8 rows). The MoE router,
norms, biases, learned positions and the scalar head stay as they are (small, and the router's top-k is
sensitive to rounding).

Decode-only: training and export refuse int8 models (one line each) before any work starts.

Where it can pay: accelerators, where XLA can fuse a weight's convert into its matmul (not yet measured here).
XLA:CPU does not: it converts
each weight in a loop of its own before a float32 dot and hoists those converts out of the decode loop, so on CPU
int8 decodes slower than float and holds a float32 copy of the weights while it runs (README, Benchmarks).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ivg_jax.errors import InputError
from ivg_jax.model.bits import cpu_16bit, take

QUANTIZE_CHOICES = ("int8",)


def require_quantize(kind, optional: bool = True) -> None:
    """One line for an unknown quantization (None, no quantization, only where `optional`)."""
    if (kind is None and optional) or kind in QUANTIZE_CHOICES:
        return
    raise InputError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}{' or none' if optional else ''}; "
                     f"got {kind!r}")


def require_float(model, action: str) -> None:
    """Refuses an int8 model where float weights are needed (`action`: "train", "export")."""
    if model.quantized:
        raise InputError(f"{model.source} holds int8 weights, which are decode-only; {action} the float model "
                         "(load it without quantize)")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Int8Weight:
    """A weight as int8 `values` (its shape) times `scale` (its shape with the contracted axes of size 1,
    stored in the model's dtype, which is also the dtype the weight stands for)."""

    values: jax.Array
    scale: jax.Array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def dtype(self):
        return self.scale.dtype

    @property
    def T(self) -> Int8Weight:  # noqa: N802 - mirrors jax.Array.T
        return Int8Weight(self.values.T, self.scale.T)

    def matrix(self, n_in: int) -> Int8Weight:
        """The weight as `[in, out]` (its first `n_in` axes are the input), scale `[1, out]`."""
        if any(d != 1 for d in self.scale.shape[:n_in]):
            raise ValueError(f"the scale {self.scale.shape} is not per output channel of a weight whose first "
                             f"{n_in} axes are its input")
        rows = int(np.prod(self.values.shape[:n_in]))
        return Int8Weight(self.values.reshape(rows, -1), self.scale.reshape(1, -1))

    def dequantize(self) -> jax.Array:
        return (self.values.astype(jnp.float32) * self.scale.astype(jnp.float32)).astype(self.dtype)


def is_quantized(x) -> bool:
    return isinstance(x, Int8Weight)


def matrix(w, n_in: int):
    """A weight whose first `n_in` axes are its input as `[in, out]`, float or `Int8Weight` (`Int8Weight.matrix`):
    plain 2-D matmuls, since XLA:CPU would otherwise copy the weight into a new layout."""
    if is_quantized(w):
        return w.matrix(n_in)
    return w.reshape(int(np.prod(w.shape[:n_in])), -1)


def leaves(tree) -> list:
    """The tree's weights, an `Int8Weight` counting as one (for dtypes and shapes)."""
    return jax.tree.leaves(tree, is_leaf=is_quantized)


def quantize_int8(w, contracted: tuple[int, ...]) -> Int8Weight:
    """Symmetric per-channel int8 of `w` (numpy on the host or a jax array), one scale per index of the axes not
    in `contracted`. All-zero channels get scale 1 (their values are 0)."""
    xp = np if isinstance(w, np.ndarray) else jnp
    w32 = w.astype(xp.float32)
    amax = xp.max(xp.abs(w32), axis=contracted, keepdims=True)
    # Products by reciprocals, not quotients: XLA rewrites a division by a constant or a broadcast that way, and
    # spelling it out makes the host and the device round every weight alike.
    scale = xp.where(amax > 0, amax * xp.float32(1 / 127), 1.0).astype(xp.float32)
    scale = scale.astype(w.dtype)  # the scale the matmul applies is the stored one: round with it
    inverse = xp.float32(1) / scale.astype(xp.float32)
    values = xp.clip(xp.round(w32 * inverse), -127, 127).astype(xp.int8)
    return Int8Weight(values, scale)


def contracted_axes(path: tuple[str, ...], ndim: int, is_moe: bool) -> tuple[int, ...] | None:
    """Which axes of the parameter at `path` (our naming; `ndim` as held, stacked or per layer) a matmul
    contracts, or None for a parameter that stays in float. Leading stack axes (layers, experts) come first and
    keep a scale of their own."""
    name = path[-1]
    if path[0] == "blocks":
        parent = path[-2]
        if parent == "attn" and name in ("q", "k", "v"):
            n_in, own = 1, 3  # [D, Nkv, H]
        elif parent == "attn" and name == "o":
            n_in, own = 2, 3  # [Nq, H, D]
        elif parent == "mlp" and name in ("gate", "up", "down"):
            n_in, own = 1, (3 if is_moe else 2)  # [(E,) in, out]
        else:
            return None
        lead = ndim - own + (1 if is_moe and parent == "mlp" else 0)  # the layers axis (if stacked), experts
        return tuple(range(lead, lead + n_in))
    if name in ("lm_head", "value_head"):
        return (0,)  # [D, V]
    if name == "embed":
        return (1,)  # [V, D]: a scale per vocab row
    return None


def quantize_params(params: dict, is_moe: bool) -> dict:
    """The weights with every quantizable parameter (`contracted_axes`) as an `Int8Weight`; blocks stacked or
    per layer. Already-quantized weights come back as they are."""
    def one(path, leaf):
        if is_quantized(leaf):
            return leaf
        names = tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))
        axes = contracted_axes(names, leaf.ndim, is_moe)
        return leaf if axes is None else _quantize_jitted(leaf, axes)

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=is_quantized)


@functools.partial(jax.jit, static_argnames=("contracted",))
def _quantize_jitted(w: jax.Array, contracted: tuple[int, ...]) -> Int8Weight:
    return quantize_int8(w, contracted)


# On XLA:CPU an int8 -> bfloat16 convert feeding a dot is ~6x slower than int8 -> float32 (measured at decode
# shapes), so CPU dequantizes into float32 matmuls; GPU and TPU fuse the convert into a matmul of x's dtype.
def _compute_dtype(x: jax.Array):
    return jnp.float32 if jax.default_backend() == "cpu" else x.dtype


def matmul_f32(x: jax.Array, w) -> jax.Array:
    """x [..., in] @ w [in, out] (an array or an `Int8Weight` of `matrix` form) accumulated and returned in
    float32."""
    if not is_quantized(w):
        if cpu_16bit(w.dtype):
            return one_row_as_two(lambda x: jnp.matmul(x, w, preferred_element_type=jnp.float32), x)
        return jnp.matmul(x, w, preferred_element_type=jnp.float32)
    dtype = _compute_dtype(x)
    product = jnp.matmul(x.astype(dtype), w.values.astype(dtype), preferred_element_type=jnp.float32)
    return product * w.scale.reshape(-1).astype(jnp.float32)


def matmul_rows_f32(x: jax.Array, w) -> jax.Array:
    """x [..., in] against the rows of w [out, in] (an embedding read as a tied head; an array or an `Int8Weight`
    scaled per row) -> [..., out] accumulated and returned in float32. One dot contracting w's last axis: through
    `w.T`, XLA:CPU makes a transposed copy of w per call, for bf16 a float32 one (4x the embedding's bytes).

    A 16-bit w on XLA:CPU is the dot's left operand (w's rows times x's, [out, ...], moved back): YNNPACK takes a
    bf16 right operand as [in, out], so with x first XLA made a transposed copy of the embedding for each loop
    that reads the head, per call (six in an IVG search of three tied models); on the left it is read in place.
    float32 dots read w in place either way and keep the plain form."""
    if not is_quantized(w):
        if cpu_16bit(w.dtype):
            return one_row_as_two(lambda x: jnp.moveaxis(
                jnp.einsum("vd,...d->v...", w, x, preferred_element_type=jnp.float32), 0, -1), x)
        return jnp.einsum("...d,vd->...v", x, w, preferred_element_type=jnp.float32)
    dtype = _compute_dtype(x)
    product = jnp.einsum("...d,vd->...v", x.astype(dtype), w.values.astype(dtype), preferred_element_type=jnp.float32)
    return product * w.scale.reshape(-1).astype(jnp.float32)


def one_row_as_two(dot, x: jax.Array) -> jax.Array:
    """dot(x) for x [..., in], a dot with a 16-bit float weight on XLA:CPU; a lone row is run as two, one kept.

    XLA:CPU hands a bf16 dot to YNNPACK (which multiplies bf16 in bf16) only from two rows up; one row it
    multiplies in float32 on a float32 copy of the whole weight, and in a decode loop XLA hoists that copy out of
    the token loop: a one-row program (one prompt, W·K = 1) held every weight a second time, in float32, and a
    one-prompt prefill a float32 copy of each vocab head. Two rows cost a dot no more (it reads the weight
    either way); results are unchanged."""
    if math.prod(x.shape[:-1]) != 1:
        return dot(x)
    row = x.reshape(1, x.shape[-1])
    out = dot(jnp.concatenate([row, row]))[:1]
    return out.reshape(*x.shape[:-1], out.shape[-1])


def take_rows(w, ids: jax.Array) -> jax.Array:
    """Rows of an embedding `[V, D]` (array or `Int8Weight` scaled per row) at `ids` -> [*ids.shape, D]."""
    if not is_quantized(w):
        return take(w, ids, axis=0)
    rows = jnp.take(w.values, ids, axis=0).astype(jnp.float32)
    return (rows * jnp.take(w.scale, ids, axis=0).astype(jnp.float32)).astype(w.dtype)


def take_columns(w, ids: jax.Array) -> jax.Array:
    """Columns of a `[in, out]` weight (array or `Int8Weight` scaled per output column) at `ids` [B] -> float32
    [B, in]: what `x @ w` reads for those outputs alone."""
    if not is_quantized(w):
        return take(w, ids, axis=1).T.astype(jnp.float32)
    columns = jnp.take(w.values, ids, axis=1).T.astype(jnp.float32)
    return columns * jnp.take(w.scale.reshape(1, -1), ids, axis=1).T.astype(jnp.float32)


def dense(w) -> jax.Array:
    """The weight as a plain array (dequantized when int8): for the einsums that keep the float path (MoE)."""
    return w.dequantize() if is_quantized(w) else w
