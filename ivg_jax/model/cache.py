"""Fixed-capacity KV cache shared by every family.

All rows write the same slot (`index`) at each call, so the write is one `dynamic_update_slice`; padding is
handled by per-slot positions (`pos == -1` marks a slot that holds no token of that row), which is also what
the attention mask is derived from. Reordering beams gathers the batch axis layer by layer, in place.

Keys and values are held either stacked, [layers, B, Nkv, S, H] (what a `lax.scan` over the blocks reads), or
as one [B, Nkv, S, H] array per layer (a tuple; the layout of unrolled blocks, `unstack_blocks`): then each
block's write is an in-place update of its own buffer, where a write into the stacked array after unrolled
blocks read their slices of it makes XLA copy the whole cache every step. Every method takes either.

A search's rows share their prompt: a cache may carry the prompt's keys and values once per prompt (`KVPrefix`,
P prompts, the B rows grouped as [P, B/P]) and hold only the rows' own new tokens, instead of B copies of the
prompt. Attention reads both; nothing else changes.

On XLA:CPU a stacked cache of 16-bit floats is held as its bits in uint16 (`bits_of`, `ivg_jax.model.bits`): the
per-token write of a bf16 stack there converts the whole cache to float32 and back, and the layer scan's reading
it as bits copied it once more; uint16 is written in place and sliced as it is.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ivg_jax.model.bits import as_bits, cpu_16bit


def _rows_axis(x: jax.Array) -> int:
    """The batch axis of a stacked [layers, B, ...] or per-layer [B, ...] key/value array."""
    return x.ndim - 4


def _take_rows(kv, rows: jax.Array):
    """kv (stacked array or per-layer tuple) with its batch axis gathered by `rows` [B'] int."""
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=_rows_axis(x)), kv)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVPrefix:
    """Keys and values of P prompts, shared by each prompt's B/P consecutive rows."""

    k: jax.Array | tuple  # [layers, P, Nkv, Sp, H], or layers x [P, Nkv, Sp, H]
    v: jax.Array | tuple
    pos: jax.Array  # [P, Sp] int32 position of each slot's token; -1 = padding

    def rows_per_prompt(self, batch: int) -> int:
        return batch // self.pos.shape[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    # [layers, B, Nkv, S, H] or layers x [B, Nkv, S, H]: (batch, kv head) lead, so both attention dots read the
    # cache in place
    k: jax.Array | tuple
    v: jax.Array | tuple
    pos: jax.Array  # [B, S] int32 position of the token held in each slot; -1 = empty or padding
    index: jax.Array  # [] int32 next slot to write, shared by all rows
    prefix: KVPrefix | None = None  # the rows' shared prompts (slots before these), or None
    # The 16-bit float dtype whose bits k and v (and the prefix's) hold as uint16 (a stacked cache on XLA:CPU, see
    # the module's docstring), or None: they hold their floats.
    bits_of: str | None = dataclasses.field(default=None, metadata=dict(static=True))

    @classmethod
    def zeros(cls, n_layers: int, batch: int, capacity: int, n_kv_heads: int, head_dim: int, dtype,
              per_layer: bool = False) -> KVCache:
        """An empty cache, stacked or (`per_layer`) one array per layer."""
        bits_of = None
        if per_layer:
            k = tuple(jnp.zeros((batch, n_kv_heads, capacity, head_dim), dtype) for _ in range(n_layers))
            v = tuple(jnp.zeros((batch, n_kv_heads, capacity, head_dim), dtype) for _ in range(n_layers))
        else:
            if cpu_16bit(dtype):
                bits_of, dtype = jnp.dtype(dtype).name, jnp.uint16
            k = jnp.zeros((n_layers, batch, n_kv_heads, capacity, head_dim), dtype)
            v = jnp.zeros((n_layers, batch, n_kv_heads, capacity, head_dim), dtype)
        return cls(k=k, v=v, pos=jnp.full((batch, capacity), -1, jnp.int32), index=jnp.zeros((), jnp.int32),
                   bits_of=bits_of)

    @property
    def dtype(self):
        """The dtype of the keys and values this cache holds (the floats, where it holds their bits)."""
        if self.bits_of is not None:
            return jnp.dtype(self.bits_of)
        return self.k[0].dtype if self.per_layer else self.k.dtype

    def empty_like(self, batch: int, capacity: int) -> KVCache:
        """An empty cache of this one's layers, layout, heads and dtype for `batch` rows and `capacity` slots."""
        if not self.per_layer:
            n_layers, _, n_kv, _, head_dim = self.k.shape
            return KVCache.zeros(n_layers, batch, capacity, n_kv, head_dim, self.dtype)
        if not self.k:  # a member whose blocks all run in a shared trunk: no keys or values of its own
            return KVCache.zeros(0, batch, capacity, 0, 0, jnp.float32, per_layer=True)
        n_kv, _, head_dim = self.k[0].shape[1:]
        return KVCache.zeros(len(self.k), batch, capacity, n_kv, head_dim, self.dtype, per_layer=True)

    @property
    def per_layer(self) -> bool:
        """Keys and values held as one array per layer (blocks on per-layer weights write their own slots,
        `advance`), not stacked."""
        return isinstance(self.k, tuple)

    @property
    def capacity(self) -> int:
        return self.pos.shape[1]

    def next_positions(self) -> jax.Array:
        """[B] the position the next token of each row takes (its number of tokens so far)."""
        last = jnp.max(self.pos, axis=1)
        if self.prefix is not None:
            prompt_last = jnp.max(self.prefix.pos, axis=1)
            last = jnp.maximum(last, jnp.repeat(prompt_last, self.prefix.rows_per_prompt(self.pos.shape[0])))
        return last + 1

    def with_prefix(self, prompts: KVCache) -> KVCache:
        """This (empty) cache of B rows reading `prompts`' P cached prompts, B/P rows per prompt."""
        assert prompts.bits_of == self.bits_of, "a prefix is held as the rows are (both made by empty_like)"
        return dataclasses.replace(self, prefix=KVPrefix(k=prompts.k, v=prompts.v, pos=prompts.pos))

    def write(self, k, v, pos: jax.Array) -> KVCache:
        """Appends T slots for every row. k, v: [layers, B, Nkv, T, H], or layers x [B, Nkv, T, H] for a per-layer
        cache; pos: [B, T] (-1 for padding)."""
        i = self.index

        def put(held, new):  # new in held's layout
            if self.per_layer:
                return tuple(jax.lax.dynamic_update_slice(h, n.astype(h.dtype), (0, 0, i, 0))
                             for h, n in zip(held, new, strict=True))
            new = new.astype(self.dtype)
            return jax.lax.dynamic_update_slice(held, new if self.bits_of is None else as_bits(new), (0, 0, 0, i, 0))

        return self.advance(put(self.k, k), put(self.v, v), pos)

    def advance(self, k, v, pos: jax.Array) -> KVCache:
        """This cache holding `k`, `v` (its own layout), into which T new slots have been written at `index`
        (by `write`, or by blocks that write before they read, `Attention(write_at=)`): records their positions
        pos [B, T] and moves the index past them."""
        i = self.index
        return dataclasses.replace(self, k=k, v=v, pos=jax.lax.dynamic_update_slice(self.pos, pos.astype(jnp.int32),
                                                                                     (0, i)), index=i + pos.shape[1])

    def take(self, rows: jax.Array) -> KVCache:
        """Selects/reorders rows (broadcasting a prompt's cache, compacting a batch). rows: [B'] int. With a
        prefix, rows must come in whole prompts (each prompt's B/P rows together), which take the prompt along."""
        prefix = self.prefix
        if prefix is not None:
            per_prompt = prefix.rows_per_prompt(self.pos.shape[0])
            prompts = rows.reshape(-1, per_prompt)[:, 0] // per_prompt
            prefix = KVPrefix(k=_take_rows(prefix.k, prompts), v=_take_rows(prefix.v, prompts),
                              pos=jnp.take(prefix.pos, prompts, axis=0))
        return dataclasses.replace(self, k=_take_rows(self.k, rows), v=_take_rows(self.v, rows),
                                   pos=jnp.take(self.pos, rows, axis=0), prefix=prefix)

    def permute(self, rows: jax.Array) -> KVCache:
        """The same rows in a new order (beam reordering; rows: [B] int, each staying within its prompt, so a
        prefix is unchanged), one layer at a time: a whole-cache gather needs a second cache-sized buffer while
        the old one is live, a per-layer one only one layer's worth, written back in place."""
        if self.per_layer or self.k.shape[0] == 0:  # per-layer buffers, or none (all in a shared trunk)
            return self.take(rows)

        def layer(i, kv):
            return tuple(jax.lax.dynamic_update_index_in_dim(
                x, jnp.take(jax.lax.dynamic_index_in_dim(x, i, 0, keepdims=False), rows, axis=0), i, 0) for x in kv)

        k, v = jax.lax.fori_loop(0, self.k.shape[0], layer, (self.k, self.v))
        return dataclasses.replace(self, k=k, v=v, pos=jnp.take(self.pos, rows, axis=0))
