"""Dataset decode jobs: JSONL prompts in, JSONL results out, resumable and shardable.

Each output line carries the prompt's id, the hash of the settings that produced it and its scores. Lines are
appended one batch at a time (flushed and fsynced); a rerun reads what is there, drops a torn last line, and
decodes only the ids that are missing, so an interrupted job loses at most the batch in flight and never
writes an id twice. Every prompt's sampling seed derives from (seed, id), so the result of a prompt does not
depend on batching, sharding or resumption. With several hosts, prompts are split by a hash of their id and each
shard writes its own file (`out.shard<i>-of-<n>.jsonl`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import zlib
from pathlib import Path

from ivg_jax import jsonl
from ivg_jax.decoding.settings import DecodeSettings
from ivg_jax.errors import InputError, require_dtype
from ivg_jax.model.quant import require_quantize


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeJobConfig(DecodeSettings):
    """A dataset decode job (the `ivg decode` command): the decode settings, the models and the files."""

    input: str
    output: str
    model: str = ""  # the base; "" = the embedded SmolLM2-135M-Instruct
    tuned: str = ""  # implicit guide: DPO-tuned model ...
    reference: str = ""  # ... and its reference
    value: str = ""  # explicit guide: token-value model
    prompt_field: str = "prompt"
    id_field: str = "id"
    batch_size: int = 8
    seed: int = 0
    num_shards: int | None = None  # default: jax.process_count()
    shard_index: int | None = None  # default: jax.process_index()
    dtype: str = "float32"
    quantize: str | None = None  # "int8": weight-only int8 models (decode-only; results differ by the rounding)

    def __post_init__(self):
        super().__post_init__()
        require_quantize(self.quantize)
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1; got {self.batch_size}")
        if "implicit" in (self.token, self.chunk) and not (self.tuned and self.reference):
            raise InputError("implicit guidance needs --tuned and --reference model paths")
        if "explicit" in (self.token, self.chunk) and not self.value:
            raise InputError("explicit guidance needs a --value model path")
        if self.num_shards is not None and self.num_shards < 1:
            raise InputError(f"num_shards must be >= 1 (or unset: one shard per process); got {self.num_shards}")
        require_dtype(self.dtype)

    def config_hash(self) -> str:
        """Hash of every setting that changes a prompt's result (not paths of files, batching, sharding or
        compaction, layer loops)."""
        skip = {"input", "output", "batch_size", "num_shards", "shard_index", "compaction", "unroll_layers"}
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        # unset, these leave the hash that outputs written before they existed carry
        if self.quantize is None:
            del settings["quantize"]
        if self.cpu_matmuls == "xla":  # another library changes float rounding, so sampled tokens may part
            del settings["cpu_matmuls"]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def read_prompts(cfg: DecodeJobConfig) -> list[tuple[str, str]]:
    """-> [(id, prompt)] in file order; ids default to the line number; duplicate ids are refused."""
    path = Path(cfg.input)
    out, seen = [], {}
    for lineno, record in jsonl.records(path):
        if not isinstance(record.get(cfg.prompt_field), str):
            raise InputError(f"{path}:{lineno}: needs a string field {cfg.prompt_field!r}")
        pid = str(record.get(cfg.id_field, lineno))
        if pid in seen:
            raise InputError(f"{path}:{lineno}: id {pid!r} already used on line {seen[pid]}; ids must be unique")
        seen[pid] = lineno
        out.append((pid, record[cfg.prompt_field]))
    if not out:
        raise InputError(f"{path} holds no prompts")
    return out


def shard_of(pid: str, n: int) -> int:
    return zlib.crc32(pid.encode()) % n


def output_path(cfg: DecodeJobConfig, index: int, n: int) -> Path:
    path = Path(cfg.output)
    return path if n == 1 else path.with_name(f"{path.stem}.shard{index}-of-{n}{path.suffix}")


OUTPUT_KEYS = ("id", "prompt", "output", "config")


@contextlib.contextmanager
def locked_output(path: Path):
    """The output file opened for appending and locked for this job: a second job on the same file is refused
    (one line) instead of decoding every prompt again and writing each id twice. Opening it here, before any
    model loads, is also the check that the location is writable. The lock is released when the file closes,
    also when the process dies."""
    if path.is_dir():
        raise InputError(f"output {path} is a directory; pass a file path (e.g. {path / 'out.jsonl'})")
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    f = path.open("a+b")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another decode job is writing {path}; wait for it to finish (rerunning then "
                             "resumes) or choose another --output") from None
        yield f
    finally:
        if not existed and f.tell() == 0 and path.stat().st_size == 0:
            path.unlink()  # refused or failed before writing anything: leave no empty file behind
        f.close()


def finished_ids(f, path: Path, config_hash: str) -> set[str]:
    """Ids already in the (locked, open) output `f`. The file must be this job's kind of output, written with
    these settings, before anything is changed in it; then a torn last line (killed mid-write) is cut off."""
    f.seek(0)
    data = f.read()
    keep = data[:data.rfind(b"\n") + 1]
    done = set()
    for lineno, line in enumerate(keep.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or any(k not in row for k in OUTPUT_KEYS):
            raise InputError(f"{path}:{lineno} is not a decode result, so {path} is not a decode output; choose "
                             "another --output (the file was left unchanged)")
        if row["config"] != config_hash:
            raise InputError(f"{path}:{lineno} was written with other settings (config {row['config']}, now "
                             f"{config_hash}); write to another --output or restore the settings")
        done.add(str(row["id"]))
    if len(keep) != len(data):
        if not data[len(keep):].startswith(b'{"id": '):  # what this job writes first on every line
            raise InputError(f"{path} ends in a line that is not a decode result; choose another --output (the "
                             "file was left unchanged)")
        f.truncate(len(keep))
    return done


def _models(cfg: DecodeJobConfig, progress: bool = False, weights: bool = True):
    """(base, Guidance) of the job; `weights=False`: configs and tokenizers only (`inspect_model`), for checks."""
    import ivg_jax
    from ivg_jax.defaults import default_model_path, resolve_model_name
    from ivg_jax.loading import inspect_model

    if weights:  # a progress bar per model: a 7B base is minutes of loading
        read = lambda p: ivg_jax.load_model(p, dtype=cfg.dtype, progress=progress,  # noqa: E731
                                            per_layer=cfg.unroll_layers, quantize=cfg.quantize)
    else:
        read = inspect_model
    loaded = {}

    def load(path: str):
        # One copy per checkpoint: the reference is usually the base itself (`--reference smollm2`), and a second
        # copy would double the weights' memory and load time. The engine takes the same Model in two roles.
        key = os.path.realpath(resolve_model_name(path))
        if key not in loaded:
            loaded[key] = read(path)
        return loaded[key]

    base = load(cfg.model or str(default_model_path()))
    guidance = cfg.guidance(tuned=lambda: load(cfg.tuned), reference=lambda: load(cfg.reference),
                            value=lambda: load(cfg.value))
    return base, guidance


def run_decode_job(cfg: DecodeJobConfig, progress: bool = True) -> Path:
    """Decodes every prompt of this shard not yet in its output file. -> the output path."""
    import jax


    n = cfg.num_shards if cfg.num_shards is not None else jax.process_count()
    index = cfg.shard_index if cfg.shard_index is not None else jax.process_index()
    if not 0 <= index < n:
        raise InputError(f"shard_index {index} is outside [0, {n})")
    prompts = [(pid, p) for pid, p in read_prompts(cfg) if shard_of(pid, n) == index]
    path = output_path(cfg, index, n)
    digest = cfg.config_hash()
    with locked_output(path) as f:
        done = finished_ids(f, path, digest)
        pending = [(pid, p) for pid, p in prompts if pid not in done]
        if pending:
            # Prompts, templates, vocabularies and context lengths against every model's tokenizer and config,
            # before any weights load (minutes for a 7B base).
            base, guidance = _models(cfg, weights=False)
            cfg.preflight(base, [p for _, p in pending], guidance)
            _decode_into(f, cfg, digest, pending, len(prompts), progress)
    return path


def _decode_into(f, cfg: DecodeJobConfig, digest: str, pending: list[tuple[str, str]], total: int,
                 progress: bool) -> None:
    """Appends one line per pending prompt, a batch at a time (flushed and fsynced: a kill loses one batch)."""
    from ivg_jax.progress import tqdm

    base, guidance = _models(cfg, progress)

    bar = tqdm(total=total, initial=total - len(pending), disable=not progress, unit="prompt")
    for start in range(0, len(pending), cfg.batch_size):
        batch = pending[start:start + cfg.batch_size]
        seeds = [zlib.crc32(f"{cfg.seed}:{pid}".encode()) % 2**31 for pid, _ in batch]
        out = cfg.decode(base, [p for _, p in batch], guidance, seeds)
        lines = [json.dumps({"id": pid, "prompt": p, "output": out.texts[i], "score": float(out.scores[i]),
                             "kl": float(out.kl[i].sum()), "new_tokens": int(out.lengths[i]),
                             "forward_tokens": float(out.forward_tokens_per_prompt[i]), "config": digest})
                 for i, (pid, p) in enumerate(batch)]
        f.write("".join(x + "\n" for x in lines).encode())
        f.flush()
        os.fsync(f.fileno())
        bar.update(len(batch))
    bar.close()
