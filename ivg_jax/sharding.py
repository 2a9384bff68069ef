"""Logical axis names -> mesh axes, in one small table.

Weights carry logical axes (`nnx.Param(..., axes=...)`); a mesh has a "data" and a "model" axis. A mesh axis
is dropped for a dimension it does not divide (batch 1 on 8 devices, 3 KV heads on 2 devices) or when an
earlier dimension of the same array already uses it, so every model loads on any mesh.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ivg_jax.model.quant import Int8Weight, is_quantized

# (logical axis, mesh axis or None): prompts over data; weights, KV heads and vocab over model.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("q_heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("experts", None),
    ("embed", None),
    ("layers", None),
    ("head_dim", None),
    ("norm", None),
    ("cache_seq", None),
)


def make_mesh(data: int = 1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "model") mesh over the first data*model devices."""
    devices = list(devices if devices is not None else jax.devices())
    need = data * model
    if need > len(devices):
        raise ValueError(f"mesh {data}x{model} needs {need} devices, only {len(devices)} are visible")
    return Mesh(np.array(devices[:need]).reshape(data, model), ("data", "model"))


def partition_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                   rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES) -> PartitionSpec:
    table = dict(rules)
    used: set[str] = set()
    spec: list[str | None] = []
    for name, dim in zip(axes, shape):
        mesh_axis = table.get(name) if name is not None else None
        if mesh_axis is None or mesh_axis in used or dim % mesh.shape[mesh_axis] != 0:
            spec.append(None)
            continue
        used.add(mesh_axis)
        spec.append(mesh_axis)
    return PartitionSpec(*spec)


def named_sharding(axes, shape, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(axes, shape, mesh, rules))


def param_logical_axes(abstract_state) -> dict[tuple[str, ...], tuple[str | None, ...]]:
    """Flat path -> logical axes of every parameter; stacked block weights gain a leading "layers" axis."""
    out = {}
    for path, var in abstract_state.flat_state():
        axes = tuple(var.axes)
        if len(axes) == len(var.shape) - 1 and path[0] == "blocks":
            axes = ("layers",) + axes
        if len(axes) != len(var.shape):
            raise AssertionError(f"parameter {'/'.join(map(str, path))} has axes {axes} for shape {var.shape}")
        out[tuple(path)] = axes
    return out


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def describe(tree: Any) -> str:
    """One line per leaf: shape and sharding spec (for logs and tests)."""
    lines = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        spec = getattr(getattr(leaf, "sharding", None), "spec", None)
        lines.append(f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)} {spec}")
    return "\n".join(lines)


def bytes_of(tree: Any) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def place(weight, axes: Sequence[str | None], mesh: Mesh | None, rules=DEFAULT_RULES):
    """A weight (an array or an `Int8Weight`) put on `mesh` by its logical axes, or on the default device without
    a mesh. An int8 weight's values and scale take the same axes: the scale's size-1 contracted axes drop their
    mesh axis as any dimension one does not divide, so the scale is split like the weight on its kept axes."""
    if is_quantized(weight):
        return Int8Weight(place(weight.values, axes, mesh, rules), place(weight.scale, axes, mesh, rules))
    if mesh is None:
        return jax.device_put(weight)
    return jax.device_put(weight, named_sharding(axes, weight.shape, mesh, rules))


@functools.lru_cache(maxsize=64)
def param_axes(config, dtype) -> dict[tuple[str, ...], tuple[str | None, ...]]:
    """`param_logical_axes` of the model `config` describes, derived once per (config, dtype): the abstract model
    is traced only the first time, so repeated `generate` calls on a mesh cost nothing here."""
    from ivg_jax.model.api import abstract_model

    return param_logical_axes(abstract_model(config, dtype)[1])


def shard_params(model, mesh: Mesh, rules=DEFAULT_RULES):
    """The model with every weight placed on its mesh sharding (a no-op placement if already there)."""
    axes = param_axes(model.config, model.dtype)

    def put_leaf(path, leaf):
        if len(path) > 1 and isinstance(path[1], jax.tree_util.SequenceKey):  # a block of `Model.per_layer`
            return place(leaf, axes[("blocks", *(str(p.key) for p in path[2:]))][1:], mesh, rules)
        return place(leaf, axes[tuple(str(p.key) for p in path)], mesh, rules)

    return model.with_params(jax.tree_util.tree_map_with_path(put_leaf, model.params, is_leaf=is_quantized))


def constrain(x: jax.Array, axes: Sequence[str | None], mesh: Mesh | None, rules=DEFAULT_RULES) -> jax.Array:
    """`with_sharding_constraint` by logical axes; identity without a mesh."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(axes, x.shape, mesh, rules))


def put(x, axes: Sequence[str | None], mesh: Mesh | None, rules=DEFAULT_RULES) -> jax.Array:
    """Host array -> device array, sharded by logical axes when a mesh is given. In a multi-process run every
    process passes the same full value."""
    if mesh is None:
        return jax.numpy.asarray(x)
    return jax.device_put(np.asarray(x), named_sharding(axes, np.shape(x), mesh, rules))


def cpu_mesh(mesh: Mesh | None) -> bool:
    """Whether `mesh` is several XLA:CPU devices (host devices), where `settle` waits."""
    return mesh is not None and mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"


def settle(tree, mesh: Mesh | None):
    """Waits for a sharded program's outputs when the mesh is several XLA:CPU devices; returns `tree`.

    On XLA:CPU (jax 0.10) each device of a multi-device program launches on its own, and the client's launch
    slots are shared: when one device queues several executions ahead, another can wait for a slot while the first
    waits for it inside a collective — a deadlock (reproduced with a 2-device psum loop dispatched 100 times on a
    2-core host under load: hung in 6 of 8 runs, 0 of 8 when each call was waited for). Host-device meshes are for
    tests, notebooks and CPU pods, where waiting costs little; GPU and TPU keep asynchronous dispatch."""
    if cpu_mesh(mesh):
        jax.block_until_ready(tree)
    return tree


def to_host(x) -> np.ndarray:
    """Device array -> numpy, gathering shards held by other processes in a multi-process run."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
