"""`load_model`: HF directory, hub id or GGUF file -> `Model`, streamed tensor by tensor.

Order of work: read the config, build the abstract model, check that every tensor the table needs is present
with the right shape (headers only), and only then read weights. Each of our parameters is assembled in one
host buffer of the target dtype (stacking layers/experts) and placed on its device sharding before the next
one is read, so the host never holds two copies of the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ivg_jax.config import ModelConfig, config_from_gguf, config_from_hf
from ivg_jax.defaults import MODEL_NAMES, resolve_model_name
from ivg_jax.errors import CheckpointError, InputError
from ivg_jax.loading.gguf_source import GGUFSource
from ivg_jax.loading.gguf_tokenizer import tokenizer_from_gguf
from ivg_jax.loading.layout import IGNORABLE_SUFFIXES, Rule, rules_for
from ivg_jax.loading.safetensors_source import PICKLE_SUFFIXES, SafetensorsSource, refuse_pickle
from ivg_jax.model import quant
from ivg_jax.model.api import Model, abstract_model
from ivg_jax.progress import tqdm
from ivg_jax.sharding import DEFAULT_RULES, param_logical_axes, place

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _resolve_dtype(dtype) -> Any:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise InputError(f"dtype={dtype!r}; choose one of {', '.join(DTYPES)}")
        return DTYPES[dtype]
    return dtype


def _set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def check_checkpoint(cfg: ModelConfig, source, rules: list[Rule], abstract: dict, where: str) -> None:
    """Every needed key present with the shape the config implies; no unexplained extra tensors."""
    needed = set()
    for rule in rules:
        full = abstract[rule.path].shape
        slice_shape = tuple(full[rule.n_stacked():])
        want = rule.hf_shape(slice_shape)
        for _, key in rule.keys(cfg.n_layers, cfg.n_experts):
            needed.add(key)
            if key not in source:
                raise CheckpointError(
                    f"{where}: tensor {key!r} is missing (needed for {'/'.join(rule.path)}). The checkpoint is "
                    "incomplete or does not match config.json; download it again or fix the config.")
            got = source.shape(key)
            if got != want:
                raise CheckpointError(
                    f"{where}: tensor {key!r} has shape {list(got)} but config.json implies {list(want)}; the "
                    "config does not belong to these weights (check hidden size, heads, layers, vocab).")
    extra = [k for k in source.keys() if k not in needed and not k.endswith(IGNORABLE_SUFFIXES)
             and not (k == "lm_head.weight" and cfg.tie_embeddings)]
    if extra:
        raise CheckpointError(
            f"{where}: {len(extra)} tensors are not used by a {cfg.family} model with this config, e.g. "
            f"{extra[:3]}; the config does not match the weights (layer count, MoE experts, head type).")


def _place_weight(buffer: np.ndarray, path: tuple[str, ...], axes, cfg: ModelConfig, quantize: str | None, mesh,
                  rules):
    """One parameter (a stack or one layer's slice) placed as it is, or quantized on the host first."""
    contracted = quant.contracted_axes(path, buffer.ndim, cfg.is_moe) if quantize else None
    return place(buffer if contracted is None else quant.quantize_int8(buffer, contracted), axes, mesh, rules)


def build_params(cfg: ModelConfig, source, dtype=jnp.float32, mesh=None, rules=DEFAULT_RULES,
                 where: str = "checkpoint", progress: bool = False, per_layer: bool = False,
                 quantize: str | None = None) -> tuple[Any, dict]:
    """(graphdef, params) with every tensor of `source` mapped, converted, stacked and placed; with `per_layer`,
    each block's weights placed as arrays of their own (`Model.per_layer`) instead of slices of a stack; with
    `quantize="int8"`, each projection quantized on the host before it is placed (`ivg_jax.model.quant`), so
    the float weights never occupy the device."""
    graphdef, abstract_state = abstract_model(cfg, dtype)
    abstract = {tuple(p): v for p, v in abstract_state.flat_state()}
    table = rules_for(cfg, checkpoint_keys=lambda k: k in source)
    by_path = {r.path: r for r in table}
    missing = set(abstract) - set(by_path)
    if missing:
        raise AssertionError(f"layout table lacks rules for {sorted(missing)}")
    check_checkpoint(cfg, source, table, abstract, where)
    axes = param_logical_axes(abstract_state)
    np_dtype = np.dtype(dtype)
    params: dict = {}
    layers: list[dict] = [{} for _ in range(cfg.n_layers)]
    for rule in tqdm(table, desc=f"loading {Path(where).name}", disable=not progress, leave=False):
        shape = tuple(abstract[rule.path].shape)
        buffer = np.empty(shape, np_dtype)
        slice_shape = shape[rule.n_stacked():]
        for index, key in rule.keys(cfg.n_layers, cfg.n_experts):
            tensor = rule.to_ours(source.get(key), slice_shape)
            _check_finite(tensor, key, where)
            buffer[index] = tensor.astype(np_dtype)
        if per_layer and rule.path[0] == "blocks":
            for layer, weights in zip(layers, buffer):
                _set_path(layer, rule.path[1:], _place_weight(weights, rule.path, axes[rule.path][1:], cfg, quantize,
                                                              mesh, rules))
        else:
            _set_path(params, rule.path, _place_weight(buffer, rule.path, axes[rule.path], cfg, quantize, mesh,
                                                       rules))
        del buffer
    if per_layer:
        params["blocks"] = tuple(layers)
    return graphdef, params


def _load_tokenizer(directory: Path, gguf_file: str | None = None):
    if gguf_file is not None:
        return _gguf_tokenizer(directory / gguf_file)
    from transformers import AutoTokenizer

    if not any((directory / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                                  "vocab.json")):
        return None
    # trust_remote_code stays False: checkpoints are data, never code.
    return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)


def cache_dir() -> Path:
    """Where ivg-jax keeps derived files: $IVG_JAX_CACHE_DIR, else $XDG_CACHE_HOME/ivg-jax, else ~/.cache/ivg-jax."""
    if os.environ.get("IVG_JAX_CACHE_DIR"):
        return Path(os.environ["IVG_JAX_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ivg-jax"


def _gguf_tokenizer(path: Path):
    """The tokenizer of a GGUF file (`tokenizer_from_gguf`, torch-free), converted once, then read from the cache.

    Converting means reading a 49k-entry vocabulary and 49k merges out of the file: ~4 s of the SmolLM2 load on
    2 CPU cores, against ~1 s for the saved fast tokenizer. The cache key is the file's content hash and the
    transformers version, so an edited file or a new converter converts again. An unwritable cache only costs
    the conversion. The cache holds what `tokenizer_from_gguf` made, so its class is known: reading it back with
    that class rather than AutoTokenizer skips importing transformers' auto-class tables (~2 s of every load of
    the embedded model on 2 CPU cores)."""
    import shutil
    import tempfile

    import transformers
    from transformers import PreTrainedTokenizerFast

    from ivg_jax.loading.gguf_source import gguf_sha256

    cached = cache_dir() / "tokenizers" / f"{gguf_sha256(path)[:24]}-transformers-{transformers.__version__}"
    if (cached / "tokenizer_config.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(cached))
    tok = tokenizer_from_gguf(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".staging-"))
        tok.save_pretrained(str(staging))
        try:
            os.rename(staging, cached)  # atomic: a concurrent loader sees no cache or a whole one
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    except OSError:
        pass
    return tok


def _is_hub_id(path: str) -> bool:
    return not os.path.exists(path) and path.count("/") == 1 and not path.startswith((".", "/", "~"))


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    # Only safetensors weights, configs and tokenizer files: never pickles or Python files.
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[
            "*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]))
    except Exception as e:  # network, HTTP and cache errors of the hub client: all mean "cannot get it here"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{repo_id}: no such local path, and the hub cannot provide it ({reason}); pass a "
                              f"local checkpoint directory, a .gguf file or a model name ({', '.join(MODEL_NAMES)})"
                              ) from e


def _check_finite(tensor: np.ndarray, key: str, where: str) -> None:
    """One NaN or inf weight turns every logit it touches into NaN and decodes to empty strings: refuse it."""
    finite = np.isfinite(tensor if tensor.dtype.kind == "f" and tensor.dtype.itemsize >= 2
                         else np.asarray(tensor, np.float32))
    if not finite.all():
        bad = int(finite.size - finite.sum())
        raise CheckpointError(f"{where}: tensor {key} holds {bad} non-finite value(s) (NaN or inf); the checkpoint "
                              "is corrupt or was saved from a diverged run: re-export it or load another one")


def load_model(path_or_id: str | os.PathLike, dtype="float32", mesh=None, rules=DEFAULT_RULES,
               tokenizer: bool = True, progress: bool = False, per_layer: bool = False,
               quantize: str | None = None) -> Model:
    """Loads a model for ivg-jax.

    `path_or_id`: a HF checkpoint directory (config.json + safetensors, sharded or not), a `.gguf` file, a
    model name (`smollm2` / `default`: the embedded SmolLM2-135M-Instruct, see `ivg_jax.defaults`), or a hub id
    (downloaded when the hub is reachable). `dtype`: "float32" (default) or "bfloat16".
    `mesh`: place each weight on its sharding (see `ivg_jax.sharding`) as it is read. `per_layer`: hold each
    block's weights as arrays of their own (`Model.per_layer`), the layout decoding runs one block after
    another in place (`generate(unroll_layers=True)` then copies nothing per call); training and export take
    the default, blocks stacked on a layers axis (`Model.with_layout` converts). `quantize="int8"`: hold the
    projections, heads and embedding as int8 with a scale per output channel (decode-only; `Model.quantize`),
    each quantized as it is read.
    """
    dtype = _resolve_dtype(dtype)
    quant.require_quantize(quantize)
    kind, path = _locate(path_or_id)
    if kind == "gguf":
        return _load_gguf(path, dtype, mesh, rules, tokenizer, progress, per_layer, quantize)
    cfg = _hf_config(path)
    source = SafetensorsSource(path)
    graphdef, params = build_params(cfg, source, dtype, mesh, rules, where=str(path), progress=progress,
                                    per_layer=per_layer, quantize=quantize)
    tok = _load_tokenizer(path) if tokenizer else None
    return Model(cfg, graphdef, params, tok, source=_source_name(str(path), quantize))


def inspect_model(path_or_id: str | os.PathLike) -> Model:
    """A model's config and tokenizer without its weights (`graphdef` and `params` are None): seconds for a 7B
    checkpoint, so jobs check prompts, templates and vocabularies against every model before loading any."""
    kind, path = _locate(path_or_id)
    if kind == "gguf":
        source = GGUFSource(path)
        cfg = _gguf_config(source, path)
        return Model(cfg, None, None, _load_tokenizer(path.parent, gguf_file=path.name), source=str(path))
    return Model(_hf_config(path), None, None, _load_tokenizer(path), source=str(path))


def _locate(path_or_id) -> tuple[str, Path]:
    """("gguf", file) or ("hf", directory) for a path, a model name or a hub id (downloaded)."""
    text = resolve_model_name(str(path_or_id))
    path = _download(text) if _is_hub_id(text) else Path(text).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory; pass a checkpoint directory, a .gguf file, "
                              f"a model name ({', '.join(MODEL_NAMES)}) or a hub id")
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf", path
        if path.suffix in PICKLE_SUFFIXES:
            refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: unknown checkpoint file type; pass a HF directory or a .gguf file")
        path = path.parent
    if not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        raise CheckpointError(f"{path}: no config.json; a HF checkpoint directory needs one (save_pretrained "
                              "writes it)")
    return "hf", path


def _hf_config(path: Path) -> ModelConfig:
    config_file = path / "config.json"
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: invalid JSON ({e})") from e
    return config_from_hf(hf_config, str(config_file))


def _gguf_config(source: GGUFSource, path: Path) -> ModelConfig:
    if "model.embed_tokens.weight" not in source:
        raise CheckpointError(f"{path}: GGUF file has no token_embd.weight tensor; it is not a complete model")
    return config_from_gguf(source.metadata, str(path), tied=source.tied,
                            vocab_size=source.shape("model.embed_tokens.weight")[0])


def _load_gguf(path: Path, dtype, mesh, rules, tokenizer: bool, progress: bool, per_layer: bool,
               quantize: str | None) -> Model:
    source = GGUFSource(path)
    cfg = _gguf_config(source, path)
    graphdef, params = build_params(cfg, source, dtype, mesh, rules, where=str(path), progress=progress,
                                    per_layer=per_layer, quantize=quantize)
    del source  # its file mapping: a finished load keeps no file pages resident
    tok = _load_tokenizer(path.parent, gguf_file=path.name) if tokenizer else None
    return Model(cfg, graphdef, params, tok, source=_source_name(str(path), quantize))


def _source_name(path: str, quantize: str | None) -> str:
    return f"{path} ({quantize})" if quantize else path
