"""Fixed-capacity KV cache shared by every family.

All rows write the same slot (`index`) at each call, so the write is one `dynamic_update_slice`; padding is
handled by per-slot positions (`pos == -1` marks a slot that holds no token of that row), which is also what
the attention mask is derived from. Reordering beams gathers the batch axis layer by layer, in place.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    # [layers, B, Nkv, S, H]: (batch, kv head) lead, so both attention dots read the cache in place
    k: jax.Array
    v: jax.Array
    pos: jax.Array  # [B, S] int32 position of the token held in each slot; -1 = empty or padding
    index: jax.Array  # [] int32 next slot to write, shared by all rows

    @classmethod
    def zeros(cls, n_layers: int, batch: int, capacity: int, n_kv_heads: int, head_dim: int, dtype) -> KVCache:
        shape = (n_layers, batch, n_kv_heads, capacity, head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   pos=jnp.full((batch, capacity), -1, jnp.int32), index=jnp.zeros((), jnp.int32))

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def next_positions(self) -> jax.Array:
        """[B] the position the next token of each row takes (its number of tokens so far)."""
        return jnp.max(self.pos, axis=1) + 1

    def write(self, k: jax.Array, v: jax.Array, pos: jax.Array) -> KVCache:
        """Appends T slots for every row. k, v: [layers, B, Nkv, T, H]; pos: [B, T] (-1 for padding)."""
        i = self.index
        return KVCache(
            k=jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), (0, 0, 0, i, 0)),
            v=jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), (0, 0, 0, i, 0)),
            pos=jax.lax.dynamic_update_slice(self.pos, pos.astype(jnp.int32), (0, i)),
            index=i + k.shape[3],
        )

    def take(self, rows: jax.Array) -> KVCache:
        """Selects/reorders rows (broadcasting a prompt's cache, compacting a batch). rows: [B'] int."""
        return KVCache(k=jnp.take(self.k, rows, axis=1), v=jnp.take(self.v, rows, axis=1),
                       pos=jnp.take(self.pos, rows, axis=0), index=self.index)

    def permute(self, rows: jax.Array) -> KVCache:
        """The same rows in a new order (beam reordering; rows: [B] int), one layer at a time: a whole-cache
        gather needs a second cache-sized buffer while the old one is live, a per-layer one only one layer's
        worth, written back in place."""
        if self.k.shape[0] == 0:  # a member whose blocks all run in a shared trunk
            return self.take(rows)

        def layer(i, kv):
            return tuple(jax.lax.dynamic_update_index_in_dim(
                x, jnp.take(jax.lax.dynamic_index_in_dim(x, i, 0, keepdims=False), rows, axis=0), i, 0) for x in kv)

        k, v = jax.lax.fori_loop(0, self.k.shape[0], layer, (self.k, self.v))
        return KVCache(k=k, v=v, pos=jnp.take(self.pos, rows, axis=0), index=self.index)
