"""Export a `Model` to a HF directory (config.json + safetensors + tokenizer) that transformers loads.

The same layout table as loading is used in reverse. A value-head model is written as a `*ForCausalLM` whose
`lm_head` is the value head (transformers' "logits" are then the token values; `ivg_jax_head: "value"` in
config.json tells ivg-jax), a scalar-head model as `*ForSequenceClassification` with `num_labels=1`.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import jax
import numpy as np

from ivg_jax.config import config_to_hf
from ivg_jax.loading.layout import rules_for
from ivg_jax.model.api import Model
from ivg_jax.model.quant import require_float
from ivg_jax.model.transformer import per_layer


def _get_path(tree: dict, path: tuple[str, ...]):
    for p in path:
        tree = tree[p]
    return tree


def _stacked(params: dict, path: tuple[str, ...]):
    """The parameter at `path`, block weights stacked on their layers axis (on the host, one parameter at a
    time, for a model that holds its blocks per layer)."""
    if path[0] == "blocks" and per_layer(params):
        return np.stack([np.asarray(_get_path(layer, path[1:])) for layer in params["blocks"]])
    return _get_path(params, path)


def hf_tensors(model: Model):
    """Yields (HF key, numpy array) one parameter at a time (fused GPT-2 c_attn parts are joined)."""
    cfg = model.config
    parts: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for rule in rules_for(cfg):
        hf_stack = rule.to_hf(_stacked(model.params, rule.path))
        for index, key in rule.keys(cfg.n_layers, cfg.n_experts):
            tensor = hf_stack[index]
            if rule.part is None:
                yield key, tensor
                continue
            parts[key][rule.part[0]] = tensor
            if len(parts[key]) == rule.part[1]:
                joined = parts.pop(key)
                yield key, np.concatenate([joined[j] for j in range(rule.part[1])], axis=-1)


def _save_shard(tensors: dict[str, np.ndarray], path: Path) -> None:
    if any(t.dtype == np.dtype("bfloat16") for t in tensors.values()):
        import jax.numpy as jnp
        from safetensors.flax import save_file

        save_file({k: jnp.asarray(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    else:
        from safetensors.numpy import save_file

        save_file(tensors, str(path), metadata={"format": "pt"})


def export_hf(model: Model, directory: str | Path, max_shard_bytes: int = 2 << 30) -> Path:
    """Writes `directory` with config.json, model.safetensors (or shards + index) and the tokenizer."""
    require_float(model, "export")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _require_room(out, model)
    config = config_to_hf(model.config)
    config["dtype"] = str(np.dtype(model.dtype))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    # Shards are written as soon as they fill, so export never holds more than one shard on the host.
    written: list[tuple[Path, list[str], int]] = []
    shard: dict[str, np.ndarray] = {}

    def flush():
        path = out / f"shard-{len(written):05d}.tmp"
        _save_shard(shard, path)
        written.append((path, list(shard), sum(t.nbytes for t in shard.values())))
        shard.clear()

    for key, tensor in hf_tensors(model):
        if shard and sum(t.nbytes for t in shard.values()) + tensor.nbytes > max_shard_bytes:
            flush()
        shard[key] = tensor
    flush()
    if len(written) == 1:
        names = ["model.safetensors"]
        written[0][0].replace(out / names[0])
    else:
        weight_map, names = {}, []
        for n, (path, keys, _) in enumerate(written, 1):
            names.append(f"model-{n:05d}-of-{len(written):05d}.safetensors")
            path.replace(out / names[-1])
            weight_map.update({k: names[-1] for k in keys})
        total = sum(nbytes for _, _, nbytes in written)
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    _remove_stale_weights(out, names)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    return out


def _remove_stale_weights(out: Path, names: list[str]) -> None:
    """An earlier export into the same directory may have left weights of another sharding: a stale index makes
    loaders read the old shards, a stale single file competes with the new index. Only weight files of the
    layouts export writes are removed."""
    keep = set(names) | ({"model.safetensors.index.json"} if len(names) > 1 else set())
    stale = [p for p in (*out.glob("model-*-of-*.safetensors"), out / "model.safetensors",
                         out / "model.safetensors.index.json") if p.exists() and p.name not in keep]
    for path in stale:
        path.unlink()


def _require_room(out: Path, model: Model) -> None:
    """A full disk is refused before the first shard is written (safetensors' own error is a traceback)."""
    from ivg_jax.errors import CheckpointError

    need = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(model.params)) + (1 << 20)
    free = shutil.disk_usage(out).free
    if free < need:
        raise CheckpointError(f"{out}: exporting {model.source} needs about {need / 2**20:.1f} MiB but only "
                              f"{free / 2**20:.1f} MiB are free; free disk space or export elsewhere")
