"""16-bit float arrays read through their bits, where XLA:CPU would make float32 copies of them.

Inside a loop XLA:CPU has no 16-bit path for a dynamic slice or a gather of a bf16 array: it converts the whole
array to float32 first (hoisted out of the decode loop for weights and embeddings, once per token for a KV cache)
and each slice back. The same bits viewed as uint16 are sliced and gathered as they are; viewing them back as bf16
is exact. Decoding reads stacked blocks and caches (`Transformer.blocks_range`) and embedding rows and head
columns (`take`) this way. A view is still a copy to XLA:CPU, so a call holds a 16-bit copy instead of a float32
one. Other backends read bf16 natively and keep the plain ops.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def is_16bit_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize == 2


def reads_bits() -> bool:
    """Whether this process's default backend reads 16-bit arrays through their bits (XLA:CPU)."""
    return jax.default_backend() == "cpu"


def cpu_16bit(dtype) -> bool:
    """Whether arrays of `dtype` are 16-bit floats on XLA:CPU: read through their bits there, and a one-row dot
    with such a weight is run as two rows (`quant.one_row_as_two`)."""
    return is_16bit_float(dtype) and reads_bits()


def as_bits(a: jax.Array) -> jax.Array:
    """A 16-bit float array as the same bits in uint16; other arrays as they are."""
    return jax.lax.bitcast_convert_type(a, jnp.uint16) if is_16bit_float(a.dtype) else a


def from_bits(a: jax.Array, dtype) -> jax.Array:
    """The inverse of `as_bits` for an array that was of `dtype`."""
    return jax.lax.bitcast_convert_type(a, dtype) if a.dtype != dtype else a


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _take_16bit(table: jax.Array, ids: jax.Array, axis: int) -> jax.Array:
    """`jnp.take` of a 16-bit float table through its bits; the gradient is `jnp.take`'s."""
    return from_bits(jnp.take(as_bits(table), ids, axis=axis), table.dtype)


def _take_16bit_fwd(table, ids, axis):
    return _take_16bit(table, ids, axis), (table, ids)


def _take_16bit_bwd(axis, residuals, g):
    table, ids = residuals
    return jax.vjp(lambda t: jnp.take(t, ids, axis=axis), jnp.zeros_like(table))[1](g)[0], None


_take_16bit.defvjp(_take_16bit_fwd, _take_16bit_bwd)


def take(table: jax.Array, ids: jax.Array, axis: int) -> jax.Array:
    """`jnp.take(table, ids, axis)`; a 16-bit float table through its bits where `reads_bits()`."""
    if cpu_16bit(table.dtype):
        return _take_16bit(table, ids, axis)
    return jnp.take(table, ids, axis=axis)
