"""Fixed-capacity KV cache shared by every family.

All rows write the same slot (`index`) at each call, so the write is one `dynamic_update_slice`; padding is
handled by per-slot positions (`pos == -1` marks a slot that holds no token of that row), which is also what
the attention mask is derived from. Reordering beams gathers the batch axis layer by layer, in place.

A search's rows share their prompt: a cache may carry the prompt's keys and values once per prompt (`KVPrefix`,
P prompts, the B rows grouped as [P, B/P]) and hold only the rows' own new tokens, instead of B copies of the
prompt. Attention reads both; nothing else changes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVPrefix:
    """Keys and values of P prompts, shared by each prompt's B/P consecutive rows."""

    k: jax.Array  # [layers, P, Nkv, Sp, H]
    v: jax.Array  # [layers, P, Nkv, Sp, H]
    pos: jax.Array  # [P, Sp] int32 position of each slot's token; -1 = padding

    def rows_per_prompt(self, batch: int) -> int:
        return batch // self.pos.shape[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    # [layers, B, Nkv, S, H]: (batch, kv head) lead, so both attention dots read the cache in place
    k: jax.Array
    v: jax.Array
    pos: jax.Array  # [B, S] int32 position of the token held in each slot; -1 = empty or padding
    index: jax.Array  # [] int32 next slot to write, shared by all rows
    prefix: KVPrefix | None = None  # the rows' shared prompts (slots before these), or None

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
        last = jnp.max(self.pos, axis=1)
        if self.prefix is not None:
            prompt_last = jnp.max(self.prefix.pos, axis=1)
            last = jnp.maximum(last, jnp.repeat(prompt_last, self.prefix.rows_per_prompt(self.pos.shape[0])))
        return last + 1

    def with_prefix(self, prompts: KVCache) -> KVCache:
        """This (empty) cache of B rows reading `prompts`' P cached prompts, B/P rows per prompt."""
        return dataclasses.replace(self, prefix=KVPrefix(k=prompts.k, v=prompts.v, pos=prompts.pos))

    def write(self, k: jax.Array, v: jax.Array, pos: jax.Array) -> KVCache:
        """Appends T slots for every row. k, v: [layers, B, Nkv, T, H]; pos: [B, T] (-1 for padding)."""
        i = self.index
        return KVCache(
            k=jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), (0, 0, 0, i, 0)),
            v=jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), (0, 0, 0, i, 0)),
            pos=jax.lax.dynamic_update_slice(self.pos, pos.astype(jnp.int32), (0, i)),
            index=i + k.shape[3],
            prefix=self.prefix,
        )

    def take(self, rows: jax.Array) -> KVCache:
        """Selects/reorders rows (broadcasting a prompt's cache, compacting a batch). rows: [B'] int. With a
        prefix, rows must come in whole prompts (each prompt's B/P rows together), which take the prompt along."""
        prefix = self.prefix
        if prefix is not None:
            per_prompt = prefix.rows_per_prompt(self.pos.shape[0])
            prompts = rows.reshape(-1, per_prompt)[:, 0] // per_prompt
            prefix = KVPrefix(k=jnp.take(prefix.k, prompts, axis=1), v=jnp.take(prefix.v, prompts, axis=1),
                              pos=jnp.take(prefix.pos, prompts, axis=0))
        return KVCache(k=jnp.take(self.k, rows, axis=1), v=jnp.take(self.v, rows, axis=1),
                       pos=jnp.take(self.pos, rows, axis=0), index=self.index, prefix=prefix)

    def permute(self, rows: jax.Array) -> KVCache:
        """The same rows in a new order (beam reordering; rows: [B] int, each staying within its prompt, so a
        prefix is unchanged), one layer at a time: a whole-cache gather needs a second cache-sized buffer while
        the old one is live, a per-layer one only one layer's worth, written back in place."""
        if self.k.shape[0] == 0:  # a member whose blocks all run in a shared trunk
            return self.take(rows)

        def layer(i, kv):
            return tuple(jax.lax.dynamic_update_index_in_dim(
                x, jnp.take(jax.lax.dynamic_index_in_dim(x, i, 0, keepdims=False), rows, axis=0), i, 0) for x in kv)

        k, v = jax.lax.fori_loop(0, self.k.shape[0], layer, (self.k, self.v))
        return KVCache(k=k, v=v, pos=jnp.take(self.pos, rows, axis=0), index=self.index, prefix=self.prefix)
