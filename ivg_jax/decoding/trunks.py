"""Shared trunks: members of a program whose bottom blocks are bitwise equal, run once per step.

Guides trained with top-N-block training (`train_top_blocks`) keep their starting model's embedding and bottom
blocks unchanged, so the DPO-tuned model, its reference and a value model made from the same checkpoint compute
identical hidden states up to the first trained block whenever they read the same prompt ids. The engine then
runs those blocks once for the group (one trunk KV cache) and branches only the top blocks and heads — exact,
since the same ops run on the same inputs.

Sharing is found from the weights (embedding and each block compared bit for bit, on the devices), never from a
flag, and only between members whose prompt ids are identical (same template and tokenizer output).
"""

from __future__ import annotations

import collections
import dataclasses
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from ivg_jax.decoding.members import Members
from ivg_jax.model.transformer import per_layer


@dataclasses.dataclass(frozen=True)
class Trunk:
    members: tuple[int, ...]  # indices in `Members` iteration order (base, tuned_0, reference_0, ..., value)
    n_layers: int  # bottom blocks (with the embedding) they all share; the trunk runs on the first member's weights


def _bits(x: jax.Array) -> jax.Array:
    """The array as unsigned integers of its width, so equality is bitwise (NaN == NaN, -0.0 != 0.0)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return jax.lax.bitcast_convert_type(x, {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize])
    return x


def _n_layers(params: dict) -> int:
    blocks = params["blocks"]
    return len(blocks) if per_layer(params) else jax.tree.leaves(blocks)[0].shape[0]


def _equal_layers(a: dict, b: dict) -> jax.Array:
    """[layers] bool: which blocks of two same-shaped weight trees are bitwise equal."""
    n_layers = _n_layers(a)
    if per_layer(a):  # one tree per block
        return jnp.stack([jnp.all(jnp.stack([jnp.all(_bits(u) == _bits(w)) for u, w in
                                             zip(jax.tree.leaves(x), jax.tree.leaves(y))]))
                          for x, y in zip(a["blocks"], b["blocks"])])
    same = jnp.ones(n_layers, bool)
    for x, y in zip(jax.tree.leaves(a["blocks"]), jax.tree.leaves(b["blocks"])):
        same &= jnp.all((_bits(x) == _bits(y)).reshape(n_layers, -1), axis=1)
    return same


@jax.jit
def _equal_prefix(a: dict, b: dict) -> jax.Array:
    """[] int32: how many leading blocks of two same-shaped weight trees (blocks stacked or per layer) are
    bitwise equal (0 when their embeddings differ)."""
    n_layers = _n_layers(a)
    same = _equal_layers(a, b)
    for key in ("embed", "pos_embed"):
        if key in a:
            for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):  # an int8 embedding: two leaves
                same &= jnp.all(_bits(x) == _bits(y))
    return jnp.where(jnp.all(same), n_layers, jnp.argmin(same)).astype(jnp.int32)


# (ids of a's leaves, ids of b's leaves) -> (weak references to those leaves, depth). Arrays are immutable, so
# the same array objects have the same bits: a decode loop over batches compares its models once, not per call.
_DEPTHS: collections.OrderedDict = collections.OrderedDict()


def _shared_depth(a: dict, b: dict) -> int:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if all(x is y for x, y in zip(la, lb)):
        return _n_layers(a)  # the same weights (a reference that is the base)
    key = (tuple(map(id, la)), tuple(map(id, lb)))
    hit = _DEPTHS.get(key)
    if hit is not None and all(ref() is x for ref, x in zip(hit[0], la + lb)):
        return hit[1]
    depth = int(_equal_prefix(a, b))
    try:
        _DEPTHS[key] = ([weakref.ref(x) for x in la + lb], depth)
    except TypeError:  # a leaf type without weak references: compare again next time
        return depth
    while len(_DEPTHS) > 64:
        _DEPTHS.popitem(last=False)
    return depth


def _trunk_weights(params: dict) -> dict:
    return {k: params[k] for k in ("blocks", "embed", "pos_embed") if k in params}


def _same_architecture(a, b) -> bool:
    """Same config apart from the head, same weight shapes and dtypes below it."""
    if dataclasses.replace(a.config, head="lm") != dataclasses.replace(b.config, head="lm"):
        return False
    shapes = lambda m: jax.tree.map(lambda x: (x.shape, x.dtype), _trunk_weights(m.params))  # noqa: E731
    return shapes(a) == shapes(b)


def shared_trunks(models: Members, encoded: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Trunk, ...]:
    """Groups of members that share bottom blocks. `encoded`: each member's (ids, mask) [P, T_m] of this call's
    prompts, in iteration order. A member joins the first earlier group whose first member reads the same ids
    and equals it in at least one bottom block; the group's depth is the smallest such prefix."""
    flat = list(models)
    groups: list[list] = []  # [first index, [members], depth]
    for i, m in enumerate(flat):
        for group in groups:
            first = group[0]
            ids_a, mask_a = encoded[first]
            ids_b, mask_b = encoded[i]
            if not (_same_architecture(flat[first], m) and np.array_equal(ids_a, ids_b)
                    and np.array_equal(mask_a, mask_b)):
                continue
            depth = _shared_depth(_trunk_weights(flat[first].params), _trunk_weights(m.params))
            if depth:
                group[1].append(i)
                group[2] = min(group[2], depth)
                break
        else:
            groups.append([i, [i], m.config.n_layers])
    return tuple(Trunk(tuple(members), depth) for _, members, depth in groups if len(members) > 1)
