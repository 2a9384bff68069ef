"""The decoder-only transformer (every family) and its pure prefill / extend functions.

The NNX module is split once (`graphdef`, plain `params` dict); the jitted functions take the plain dict and
merge inside the trace, so no NNX object crosses the jit boundary at run time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ivg_jax.config import ModelConfig
from ivg_jax.errors import InputError
from ivg_jax.model.bits import as_bits, from_bits, reads_bits
from ivg_jax.model.cache import KVCache
from ivg_jax.model.layers import Block, Norm, _param, layer_attention, softcap
from ivg_jax.model.quant import matmul_f32, matmul_rows_f32, take_columns, take_rows


class Transformer(nnx.Module):
    """Embedding, `n_layers` blocks stacked on a leading `layers` axis (run by `lax.scan`), final norm, head.

    Head outputs: "lm" logits [B, T, V]; "value" token values S_t [B, T, V] (spec §1); "scalar" [B, T].
    """

    def __init__(self, cfg: ModelConfig, dtype=jnp.float32, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), dtype, ("vocab", "embed"))
        if cfg.positions == "learned":
            self.pos_embed = _param(rngs, (cfg.max_positions, cfg.d_model), dtype, (None, "embed"), scale=0.01)

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs):
            return Block(cfg, dtype, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = Norm(cfg, dtype, rngs=rngs)
        if cfg.head == "lm" and not cfg.tie_embeddings:
            self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), dtype, ("embed", "vocab"))
        elif cfg.head == "value":
            self.value_head = _param(rngs, (cfg.d_model, cfg.vocab_size), dtype, ("embed", "vocab"))
        elif cfg.head == "scalar":
            self.score_head = _param(rngs, (cfg.d_model,), dtype, ("embed",))

    def hidden(self, tokens: jax.Array, positions: jax.Array, cache: KVCache | None = None, frozen_layers: int = 0,
               trunk: jax.Array | None = None, layers: tuple | None = None):
        """tokens, positions: [B, T] -> final-normed hidden [B, T, D], new k and v [layers, B, Nkv, T, H].

        `frozen_layers` > 0 (training without a cache) runs the bottom blocks as their own scan and stops the
        gradient at its output, so backpropagation never enters them: top-N-block training costs a forward of
        the frozen part, not a backward. `trunk` [B, T, D], the bottom blocks' output for these tokens (from
        `trunk_forward`), skips the embedding and the bottom blocks altogether; k and v then cover only the top
        blocks.
        """
        if frozen_layers and cache is not None:
            raise InputError("frozen_layers is a training option; it cannot be combined with a KV cache")
        n = self.cfg.n_layers
        if not frozen_layers:
            x, k, v = self.blocks_range(self.embed_tokens(tokens, positions), positions, 0, n, cache, layers=layers)
            return self.final_norm(x), k, v
        kv_bottom = None
        if trunk is None:
            trunk, *kv_bottom = self.blocks_range(self.embed_tokens(tokens, positions), positions, 0, frozen_layers)
        x, k, v = self.blocks_range(jax.lax.stop_gradient(trunk), positions, frozen_layers, n)
        if kv_bottom is not None:
            k, v = jnp.concatenate([kv_bottom[0], k]), jnp.concatenate([kv_bottom[1], v])
        return self.final_norm(x), k, v

    def blocks_range(self, x: jax.Array, positions: jax.Array, start: int, stop: int, cache: KVCache | None = None,
                     copy_weights: bool = True, layers: tuple | None = None):
        """Blocks [start, stop) (one `lax.scan`) on x [B, T, D] -> (x [B, T, D], not normed; new k and v
        [stop - start, B, Nkv, T, H]). `cache` holds exactly these blocks' keys and values.

        A part of the stack is scanned over a slice of the stacked weights (`copy_weights`, what training wants:
        the gradient is the slice's), or, for decoding, over layer indices into the whole stack: XLA hoists a
        slice out of the decode loop as a copy of those blocks' weights — a second copy of a guide's trunk for
        the whole search — while an index reads each block in place, as the full-stack scan does.

        `layers` (`unstack_blocks`: one weights dict per block) runs the blocks one after another instead and
        returns k and v as tuples, one per block; with a cache (which must be in the same layout, one array per
        layer) each block writes its new slots into its own buffer and the tuples are the updated buffers
        [B, Nkv, S, H] (`KVCache.advance`), else the new k and v [B, Nkv, T, H].
        """
        inv_freqs, windows = layer_attention(self.cfg)
        differ = self.cfg.layers_differ  # then each scan step reads its block's row of the two tables
        graphdef, block_params = nnx.split(self.blocks)
        whole = (start, stop) == (0, self.cfg.n_layers)
        by_index = layers is None and not whole and not copy_weights
        if layers is None and not whole and copy_weights:
            block_params = jax.tree.map(lambda a: a[start:stop], block_params)
        # Decoding (no gradient wanted) scans 16-bit float blocks and caches as their bits (`ivg_jax.model.bits`):
        # XLA:CPU would slice a float32 copy of each stack.
        packed = layers is None and (cache is not None or not copy_weights) and reads_bits()
        if packed:
            dtypes = jax.tree.map(lambda a: a.dtype, block_params)
            block_params = jax.tree.map(as_bits, block_params)

        prefix = None if cache is None else cache.prefix
        write_first = layers is not None and cache is not None
        if cache is not None and cache.per_layer != (layers is not None):
            raise InputError("blocks on per-layer weights (unstack_blocks) read a per-layer cache and stacked blocks "
                             "a stacked one (as their prefill makes them); this cache is "
                             + ("per-layer" if cache.per_layer else "stacked"))

        def attention_of(i):
            """Block i's (rotary inverse frequencies, window): i a Python int (unrolled blocks) or traced."""
            if not differ:
                return None if inv_freqs is None else jnp.asarray(inv_freqs[0]), self.cfg.window_of_layers()[0]
            if isinstance(i, int):
                return None if inv_freqs is None else jnp.asarray(inv_freqs[i]), int(windows[i])
            return None if inv_freqs is None else jnp.asarray(inv_freqs)[i], jnp.asarray(windows)[i]

        def layer(x, scanned):
            params, index, *kv = scanned
            if packed:
                kv = [None if a is None else from_bits(a, cache.dtype) for a in kv]
            cache_k, cache_v, prefix_k, prefix_v = kv
            if by_index:
                params = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False),
                                      block_params)
            block = nnx.merge(graphdef, jax.tree.map(from_bits, params, dtypes) if packed else params)
            shared = None if prefix is None else (prefix_k, prefix_v, prefix.pos)
            inv_freq, window = attention_of(index)
            x, k, v = block(x, positions, inv_freq, cache_k, cache_v, None if cache is None else cache.pos, shared,
                            cache.index if write_first else None, window)
            return x, (k, v)

        rows_kv = (None, None) if cache is None else (cache.k, cache.v)
        prefix_kv = (None, None) if prefix is None else (prefix.k, prefix.v)
        if packed:  # a 16-bit stacked cache is sliced per block like the weights: on XLA:CPU it holds its bits
            rows_kv, prefix_kv = (tuple(None if a is None else as_bits(a) for a in kv) for kv in (rows_kv, prefix_kv))
        if layers is not None:  # the same block step, unrolled over per-layer weights and cache buffers
            ks, vs = [], []
            for i, weights in enumerate(layers[start:stop]):
                x, (k, v) = layer(x, (weights, start + i,
                                      *(None if a is None else a[i] for a in (*rows_kv, *prefix_kv))))
                ks.append(k)
                vs.append(v)
            return x, tuple(ks), tuple(vs)
        index = jnp.arange(start, stop) if by_index or differ else None
        scanned = (None if by_index else block_params, index, *rows_kv, *prefix_kv)
        x, (k, v) = jax.lax.scan(layer, x, scanned)
        return x, k, v

    def top(self, x: jax.Array, positions: jax.Array, from_layer: int, cache: KVCache | None = None,
            layers: tuple | None = None, head: bool = True):
        """The model from block `from_layer` on, given those blocks' input x [B, T, D] (the embedding when
        `from_layer` is 0) -> (head output float32, or the final-normed hidden without `head`; new k and v of
        blocks [from_layer, N))."""
        x, k, v = self.blocks_range(x, positions, from_layer, self.cfg.n_layers, cache, copy_weights=False,
                                    layers=layers)
        h = self.final_norm(x)
        return (self.head(h) if head else h), k, v

    def embed_tokens(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """tokens, positions [B, T] -> the first block's input [B, T, D]."""
        x = take_rows(self.embed.get_value(), tokens)
        if self.cfg.embed_scale:
            x = x * jnp.asarray(self.cfg.d_model ** 0.5, x.dtype)
        if self.cfg.positions == "learned":
            x = x + jnp.take(self.pos_embed[...], jnp.maximum(positions, 0), axis=0)
        return x

    def trunk(self, tokens: jax.Array, positions: jax.Array, n_layers: int, layers: tuple | None = None):
        """The output of the bottom `n_layers` blocks (not normed): [B, T] -> [B, T, D]."""
        return self.blocks_range(self.embed_tokens(tokens, positions), positions, 0, n_layers, layers=layers)[0]

    def head(self, h: jax.Array) -> jax.Array:
        """h: [B, T, D] -> float32 head output ([B, T, V] or [B, T] for the scalar head)."""
        cfg = self.cfg
        if cfg.head == "scalar":
            return jnp.einsum("btd,d->bt", h, self.score_head[...]).astype(jnp.float32)
        if cfg.head == "value":
            out = matmul_f32(h, self.value_head.get_value())
        elif cfg.tie_embeddings:
            out = matmul_rows_f32(h, self.embed.get_value())
        else:
            out = matmul_f32(h, self.lm_head.get_value())
        return softcap(out, cfg.logit_softcap if cfg.head == "lm" else None)

    def head_at(self, h: jax.Array, ids: jax.Array) -> jax.Array:
        """`head(h)` at one vocabulary column per row: h [B, D] (final-normed), ids [B] -> float32 [B], without
        the [B, V] projection (a chunk score reads the value model only at each row's sampled token)."""
        cfg = self.cfg
        if cfg.head == "scalar":
            raise ValueError("a scalar head has no vocabulary columns")
        if cfg.head == "value":
            columns = take_columns(self.value_head.get_value(), ids)
        elif cfg.tie_embeddings:
            columns = take_rows(self.embed.get_value(), ids).astype(jnp.float32)
        else:
            columns = take_columns(self.lm_head.get_value(), ids)
        out = jnp.einsum("bd,bd->b", h.astype(jnp.float32), columns)
        return softcap(out, cfg.logit_softcap if cfg.head == "lm" else None)

    def __call__(self, tokens, positions, cache: KVCache | None = None, layers: tuple | None = None,
                 head: bool = True):
        """-> (head output float32, or the final-normed hidden [B, T, D] without `head`; new k and v)."""
        h, k, v = self.hidden(tokens, positions, cache, layers=layers)
        return (self.head(h) if head else h), k, v


def per_layer(params: dict) -> bool:
    """Whether the weights hold their blocks as one weights dict per layer (`unstack_blocks`)."""
    return isinstance(params["blocks"], tuple)


def unstack_blocks(params: dict) -> dict:
    """The weights with their blocks as a tuple of per-layer dicts ([layers, ...] -> layers x [...]): the
    decode layout (`generate(unroll_layers=True)`, `load_model(per_layer=True)`).

    XLA:CPU runs a block stack as a loop whose every step copies the block's weights out of the stacked arrays
    (per token; 16-bit stacks are read through their bits, `ivg_jax.model.bits`, else it would slice a float32
    copy of them); blocks with weights of their own run in place. Made inside a jitted search, the slices are one
    copy of the blocks per call, outside its token loop. Weights already in this layout come back as they are.
    """
    blocks = params["blocks"]
    if per_layer(params):
        return params
    n = jax.tree.leaves(blocks)[0].shape[0]
    return {**params, "blocks": tuple(jax.tree.map(lambda a, i=i: a[i], blocks) for i in range(n))}


def stack_blocks(params: dict) -> dict:
    """The inverse of `unstack_blocks`: blocks stacked on a leading `layers` axis, the layout training, export
    and the module itself (`nnx.merge`) take. Weights already stacked come back as they are."""
    if not per_layer(params):
        return params
    return {**params, "blocks": jax.tree.map(lambda *layer: jnp.stack(layer), *params["blocks"])}


def _merge(graphdef, params: dict) -> tuple[Transformer, tuple | None]:
    """The module and, for weights in the decode layout (`unstack_blocks`), its per-layer weights. The module
    then holds a one-block stack (layer 0): only its structure is read."""
    blocks = params["blocks"]
    if not per_layer(params):
        return nnx.merge(graphdef, params), None
    return nnx.merge(graphdef, {**params, "blocks": jax.tree.map(lambda a: a[None], blocks[0])}), blocks


def positions_from_mask(mask: jax.Array, start: jax.Array | int = 0) -> jax.Array:
    """[B, T] per-row positions of the valid tokens (counting from `start` [B] or scalar), -1 for padding.

    Works for left, right or interior padding: a row's valid tokens get consecutive positions in slot order.
    """
    mask = mask.astype(bool)
    pos = jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1 + jnp.asarray(start, jnp.int32).reshape(-1, 1)
    return jnp.where(mask, pos, -1)


def last_valid(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x [B, T, ...] at each row's last valid column (left or right padding) -> [B, ...]."""
    idx = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    return jnp.take_along_axis(x, idx.reshape(-1, *([1] * (x.ndim - 1))), axis=1)[:, 0]


def _check_capacity(tokens: jax.Array, capacity: int) -> None:
    if tokens.shape[1] > capacity:
        raise InputError(
            f"prompt batch is {tokens.shape[1]} tokens long but the cache holds {capacity}; raise capacity "
            "(prompt length + new tokens) or shorten the prompts")


def _fresh_cache(k, v, positions: jax.Array, capacity: int) -> KVCache:
    """A cache of `capacity` slots holding k, v in its first T slots, in their layout: [layers, B, Nkv, T, H]
    stacked, or layers x [B, Nkv, T, H] (one array per layer)."""
    like = KVCache(k=k, v=v, pos=positions, index=jnp.zeros((), jnp.int32))
    return like.empty_like(positions.shape[0], capacity).write(k, v, positions)


@functools.partial(jax.jit, static_argnames=("graphdef", "capacity", "last_only", "from_layer", "head"))
def prefill(graphdef, params, tokens: jax.Array, mask: jax.Array, capacity: int, last_only: bool = False,
            from_layer: int = 0, trunk: jax.Array | None = None, head: bool = True):
    """Runs padded prompts into a fresh cache of `capacity` slots.

    tokens, mask: [B, T] -> (head output float32 [B, T, ...], or [B, ...] at each row's last prompt token when
    `last_only`, which skips the vocab projection of every other position; KVCache with index T).
    `from_layer` > 0: `trunk` [B, T, D] is the output of blocks [0, from_layer) for these tokens
    (`prefill_trunk`, run once for models whose bottom blocks are equal), and the cache holds blocks
    [from_layer, N) only. Without `head`, the final-normed hidden [B, (T,) D] instead of the head output (read
    at chosen columns with `head_at`).
    """
    _check_capacity(tokens, capacity)
    model, layers = _merge(graphdef, params)
    positions = positions_from_mask(mask)
    x = trunk if from_layer else model.embed_tokens(tokens, positions)
    h, k, v = model.blocks_range(x, positions, from_layer, model.cfg.n_layers, copy_weights=False, layers=layers)
    h = model.final_norm(h)
    if last_only:
        h = last_valid(h, mask)[:, None]  # [B, 1, D]
    out = model.head(h) if head else h
    return (out[:, 0] if last_only else out), _fresh_cache(k, v, positions, capacity)


@functools.partial(jax.jit, static_argnames=("graphdef", "capacity", "n_layers"))
def prefill_trunk(graphdef, params, tokens: jax.Array, mask: jax.Array, capacity: int, n_layers: int):
    """The bottom `n_layers` blocks of padded prompts: tokens, mask [B, T] -> (their output [B, T, D], a fresh
    KVCache of those blocks with index T)."""
    _check_capacity(tokens, capacity)
    model, layers = _merge(graphdef, params)
    positions = positions_from_mask(mask)
    x, k, v = model.blocks_range(model.embed_tokens(tokens, positions), positions, 0, n_layers, copy_weights=False,
                                 layers=layers)
    return x, _fresh_cache(k, v, positions, capacity)


@functools.partial(jax.jit, static_argnames=("graphdef", "from_layer", "head"), donate_argnames=("cache",))
def extend(graphdef, params, tokens: jax.Array, mask: jax.Array, cache: KVCache, from_layer: int = 0,
           trunk: jax.Array | None = None, head: bool = True):
    """Appends T tokens per row (T=1 is a decode step) and returns their outputs and the updated cache.

    tokens, mask: [B, T]; rows whose mask is 0 write padding slots that later queries never see. `from_layer`,
    `trunk` [B, T, D]: as in `prefill` (the trunk from `extend_trunk`; the cache holds the top blocks). `head`:
    as in `prefill`.
    """
    model, layers = _merge(graphdef, params)
    positions = positions_from_mask(mask, cache.next_positions())
    if from_layer:
        out, k, v = model.top(trunk, positions, from_layer, cache, layers, head=head)
    else:
        out, k, v = model(tokens, positions, cache, layers, head=head)
    return out, _updated(cache, k, v, positions)


def head_at(graphdef, params, h: jax.Array, ids: jax.Array) -> jax.Array:
    """`Model.head_at` of the model (graphdef, params): h [B, D], ids [B] -> float32 [B]."""
    return _merge(graphdef, params)[0].head_at(h, ids)


@functools.partial(jax.jit, static_argnames=("graphdef", "n_layers"), donate_argnames=("cache",))
def extend_trunk(graphdef, params, tokens: jax.Array, mask: jax.Array, cache: KVCache, n_layers: int):
    """`extend` through the bottom `n_layers` blocks only: -> (their output [B, T, D], the trunk cache)."""
    model, layers = _merge(graphdef, params)
    positions = positions_from_mask(mask, cache.next_positions())
    x, k, v = model.blocks_range(model.embed_tokens(tokens, positions), positions, 0, n_layers, cache,
                                 copy_weights=False, layers=layers)
    return x, _updated(cache, k, v, positions)


def _updated(cache: KVCache, k, v, positions: jax.Array) -> KVCache:
    """The cache after blocks ran T new tokens [B, T] on it: blocks on a per-layer cache wrote their slots
    themselves (`blocks_range`)."""
    return cache.advance(k, v, positions) if cache.per_layer else cache.write(k, v, positions)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def step(graphdef, params, tokens: jax.Array, cache: KVCache):
    """One decode step: tokens [B] -> (head output [B, ...] float32, cache)."""
    out, cache = extend(graphdef, params, tokens[:, None], jnp.ones_like(tokens[:, None], bool), cache)
    return out[:, 0], cache


@functools.partial(jax.jit, static_argnames=("graphdef",))
def full_forward(graphdef, params, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Head output of a padded batch without a cache: tokens, mask [B, T] -> [B, T, ...] float32."""
    model, layers = _merge(graphdef, params)
    out, _, _ = model(tokens, positions_from_mask(mask), layers=layers)
    return out


@functools.partial(jax.jit, static_argnames=("graphdef", "n_layers"))
def trunk_forward(graphdef, params, tokens: jax.Array, mask: jax.Array, n_layers: int) -> jax.Array:
    """The bottom `n_layers` blocks' output of a padded batch: tokens, mask [B, T] -> [B, T, D] (model dtype).
    Top-N-block training computes it once per example and starts every step from it (`train_forward(trunk=)`):
    exact, since the frozen blocks never change."""
    model, layers = _merge(graphdef, params)
    return model.trunk(tokens, positions_from_mask(mask), n_layers, layers)


def train_forward(graphdef, params, tokens: jax.Array, mask: jax.Array, frozen_layers: int = 0,
                  trunk: jax.Array | None = None, window: jax.Array | None = None) -> jax.Array:
    """Differentiable head output of a padded batch (call inside a jitted train step): tokens, mask [B, T] ->
    [B, T, ...] float32, or [B, W, ...] at the positions `window` [B, W] (0 <= window < T) only — the vocab
    projection is most of a small model's cost, and only the positions that predict targets need it. The
    bottom `frozen_layers` blocks get no gradient and no backward pass; with `trunk` [B, T, D] (their output,
    from `trunk_forward`) they are not run at all."""
    if per_layer(params):
        raise InputError("training takes blocks stacked on a layers axis; this model holds them per layer "
                         "(load_model(per_layer=True)): train model.with_layout(per_layer=False)")
    model = nnx.merge(graphdef, params)
    h, _, _ = model.hidden(tokens, positions_from_mask(mask), frozen_layers=frozen_layers, trunk=trunk)
    if window is not None:
        h = jnp.take_along_axis(h, window[..., None], axis=1)
    return model.head(h)
