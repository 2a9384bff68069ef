"""One training job, any objective: inputs checked, model prepared, the Optax loop with validation, Orbax
checkpoints, JSONL metrics, a progress bar, exact resume and the final HF export.

Run directory layout:
    config.json           the job (a resume must match it)
    metrics.jsonl         one line per logged train step and per validation
    validation/<step>.npz  per-example validation outputs (file order)
    reference_logprobs.npz  DPO with precomputed reference log-probs (computed once, reused on resume)
    checkpoints/<step>/   Orbax checkpoints (latest N + best by validation)
    export/               the exported checkpoint (the best validated, or the final with select="final") as an HF
                          directory (our loader and transformers both read it)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ivg_jax.errors import CheckpointError, InputError, check_template, require_dtype, require_finite, require_positive
from ivg_jax.guidance import same_vocabulary
from ivg_jax.model.api import Model, abstract_model, attach_head
from ivg_jax.model.quant import require_float
from ivg_jax.sharding import DEFAULT_RULES, make_mesh, settle, to_host
from ivg_jax.training import data as data_lib
from ivg_jax.training.checkpoint import Checkpoints
from ivg_jax.training.optim import OptimConfig, make_optimizer
from ivg_jax.training.steps import (
    HEAD_OF,
    Objective,
    build_steps,
    frozen_layer_count,
    join_params,
    shard_model_params,
    split_params,
)

REFERENCE_MODES = ("precompute", "per_batch")
# Fully sharded data parallel: weights' model dimension also split over the data axis (gathered per layer by
# XLA), on top of the default tensor-parallel rules.
FSDP_RULES = tuple((name, "data") if name == "embed" else (name, axis) for name, axis in DEFAULT_RULES)
DATA_KIND = {"sft": "sft", "dpo": "preference", "reward": "preference", "fudge": "scored"}
# Which checkpoint a finished run exports. "final" suits small, noisy validation sets, where the best-by-loss
# step is mostly chance (a fixed schedule decaying to 0 is the usual DPO recipe).
SELECT = ("best", "final")
BEST_METRIC = {"sft": "val_loss", "dpo": "val_loss", "reward": "val_loss", "fudge": "val_mse"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training job. `model` is a path or hub id (or a `Model` passed to `train`); for FUDGE / reward models
    an LM checkpoint gets a fresh value / scalar head. DPO's reference defaults to the initial model."""

    objective: str
    train_data: str
    output_dir: str
    model: str = ""
    val_data: str | None = None
    reference: str | None = None
    template: str = "{prompt}"
    max_length: int = 256
    batch_size: int = 8
    eval_batch_size: int | None = None
    steps: int | None = None
    epochs: float = 1.0
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.25
    schedule: str = "cosine"
    weight_decay: float = 0.05
    clip_norm: float | None = 1.0
    grad_accum: int = 1
    beta: float = 0.1
    label_smoothing: float = 0.0
    reference_logprobs: str = "precompute"
    train_top_blocks: int | None = None
    cache_trunk: bool = True
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 50
    save_every: int = 50
    keep_last: int = 2
    select: str = "best"  # the exported weights: "best" validated step (the start included) or "final" step
    log_every: int = 1
    mesh_data: int = 1
    mesh_model: int = 1
    fsdp: bool = False
    export: bool = True

    def __post_init__(self):
        Objective(self.objective, self.beta, self.label_smoothing)
        OptimConfig(**self.optim_fields())
        if self.reference_logprobs not in REFERENCE_MODES:
            raise InputError(f"reference_logprobs must be one of {REFERENCE_MODES}; got {self.reference_logprobs!r}")
        require_dtype(self.dtype)
        check_template(self.template)
        require_positive(self, ("batch_size", "eval_every", "save_every", "keep_last", "log_every", "mesh_data",
                                "mesh_model"))
        require_finite(self, ("epochs",))
        if self.steps is not None and self.steps < 1:
            raise InputError(f"steps must be >= 1; got {self.steps}")
        if self.epochs <= 0:
            raise InputError(f"epochs must be > 0; got {self.epochs}")
        if self.select not in SELECT:
            raise InputError(f"select must be one of {', '.join(SELECT)}; got {self.select!r}")
        if self.reference and self.objective != "dpo":
            raise InputError(f"a reference model only applies to DPO, not {self.objective}")

    def optim_fields(self) -> dict:
        names = ("learning_rate", "warmup_ratio", "schedule", "weight_decay", "clip_norm", "grad_accum")
        return {n: getattr(self, n) for n in names}

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)

    def fingerprint(self) -> dict:
        """What a resumed run must share with the run that wrote the checkpoints."""
        keep = ("objective", "train_data", "model", "reference", "template", "max_length", "batch_size", "steps",
                "epochs", "learning_rate", "warmup_ratio", "schedule", "weight_decay", "clip_norm", "grad_accum",
                "beta", "label_smoothing", "train_top_blocks", "dtype", "seed")
        return {k: getattr(self, k) for k in keep}


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    final_step: int
    best_step: int | None  # the exported step: the best validated one, or the final one (select="final")
    best_metrics: dict | None  # its validation metrics
    export_dir: Path | None
    model: Model  # the best weights, merged


class _Interrupt(Exception):
    pass


def _load(source, dtype, mesh, rules, progress: bool = False):
    if isinstance(source, Model):
        return source.with_layout(per_layer=False)  # training slices and scans the stacked blocks
    from ivg_jax.loading import load_model

    return load_model(source, dtype=dtype, mesh=mesh, rules=rules, progress=progress)


def _require_same_vocabulary(policy: Model, reference: Model) -> None:
    if not same_vocabulary(policy, reference):
        raise InputError(f"policy {policy.source} and reference {reference.source} have different tokenizers; "
                         "DPO compares their log-probs of the same token ids, so they must share one")


def prepare_model(cfg: TrainConfig, model: Model | None, mesh, rules, progress: bool = False) -> Model:
    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    if model is None and not cfg.model:
        raise InputError("no model given: set TrainConfig.model to a path or hub id, or pass model=")
    model = _load(model if model is not None else cfg.model, dtype, mesh, rules, progress)
    head = HEAD_OF[cfg.objective]
    if model.config.head != head:
        if head == "lm":
            raise InputError(f"{cfg.objective} trains a language model but {model.source} has a {model.config.head} "
                             "head; start from an LM checkpoint")
        model = attach_head(model, head, seed=cfg.seed)
    if model.tokenizer is None:
        raise InputError(f"{model.source} has no tokenizer; training reads text and needs one")
    return model


def train(cfg: TrainConfig, model: Model | None = None, reference: Model | None = None,
          progress: bool = True, stop_at_step: int | None = None) -> TrainResult:
    """Runs (or resumes) the job in `cfg.output_dir`. Ctrl-C / SIGTERM save a checkpoint before stopping.

    `stop_at_step`: checkpoint and return after that step (a time-sliced or preemptible job); running the same
    config again resumes exactly where it stopped.
    """
    for given in (model, reference):
        if given is not None:
            require_float(given, "train")
    objective = Objective(cfg.objective, cfg.beta, cfg.label_smoothing)
    kind = DATA_KIND[cfg.objective]
    # Cheap checks first: schemas before any model is loaded.
    train_records = data_lib.read_jsonl(cfg.train_data, kind)
    val_records = data_lib.read_jsonl(cfg.val_data, kind) if cfg.val_data else None
    run_dir = cfg.run_dir
    _check_config(cfg, run_dir)

    # Every example is tokenised, and the reference's vocabulary compared, with tokenizers and configs alone
    # (`inspect_model`), so a bad record or a mismatched reference is refused before any weights load.
    from ivg_jax.loading import inspect_model

    if model is None and not cfg.model:
        raise InputError("no model given: set TrainConfig.model to a path or hub id, or pass model=")
    shell = model if model is not None else inspect_model(cfg.model)
    if objective.kind == "dpo" and reference is None and cfg.reference:
        _require_same_vocabulary(shell, inspect_model(cfg.reference))
    tok = data_lib.Tokenization(cfg.template, cfg.max_length, data_lib.eos_of(shell))
    pad_id = shell.config.pad_token_id or 0
    train_examples = data_lib.tokenize(train_records, kind, shell.tokenizer, tok, cfg.train_data)
    val_examples = data_lib.tokenize(val_records, kind, shell.tokenizer, tok, cfg.val_data) if val_records else []
    # Sizes that cannot work are refused here too, before any weights load.
    batches = data_lib.Batches(train_examples, cfg.batch_size, cfg.seed, pad_id=pad_id)
    frozen_layers = frozen_layer_count(shell.config.n_layers, cfg.train_top_blocks)

    rules = FSDP_RULES if cfg.fsdp else DEFAULT_RULES
    mesh = make_mesh(cfg.mesh_data, cfg.mesh_model) if cfg.mesh_data * cfg.mesh_model > 1 else None
    model = prepare_model(cfg, model, mesh, rules, progress)
    ref_model = None
    if objective.kind == "dpo":
        ref_model = _load(reference if reference is not None else (cfg.reference or model), model.dtype, mesh, rules,
                          progress)
        _require_same_vocabulary(model, ref_model)
    total = cfg.steps or max(1, int(math.ceil(cfg.epochs * batches.batches_per_epoch)))

    _, abstract = abstract_model(model.config, model.dtype)
    trainable, frozen = split_params(model.params, frozen_layers)
    trainable = shard_model_params(trainable, abstract, mesh, rules)
    frozen = shard_model_params(frozen, abstract, mesh, rules)
    optimizer = make_optimizer(OptimConfig(**cfg.optim_fields()), total)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    cached = frozen_layers > 0 and cfg.cache_trunk
    fns = build_steps(objective, model.graphdef, optimizer, frozen_layers, mesh, rules,
                      ref_graphdef=None if ref_model is None else ref_model.graphdef,
                      reference_uses_trunk=cached and ref_model is not None
                      and shares_bottom(model, ref_model, frozen_layers))
    state = fns.init(trainable)

    # Only a job that passed every check owns the directory: a refused one leaves nothing that would refuse
    # the corrected rerun as "a run with different settings".
    _write_config(cfg, run_dir)

    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.keep_last, BEST_METRIC[cfg.objective])
    resumed = checkpoints.latest_step()
    if resumed is not None:
        state, saved = checkpoints.restore(resumed, state)
        batches.restore(saved["data"])
    start = resumed or 0
    end = min(total, stop_at_step or total)  # this sitting's last step
    ref_cache = run_dir / "reference_logprobs.npz"
    precompute = objective.kind == "dpo" and cfg.reference_logprobs == "precompute"
    if cached:
        # Only what this sitting reads: a short (--steps) or resumed run skips the examples it never reaches,
        # unless the reference's log-probs of every pair are still to be computed (they read the trunk too).
        if precompute and not ref_cache.exists():
            used = list(train_examples)
        else:
            used = [train_examples[i] for i in batches.upcoming(end - start)]
        attach_trunk(model, frozen_layers, used + list(val_examples), eval_bs, pad_id, mesh, rules,
                     progress=progress)
    if precompute:
        _attach_reference(fns, ref_model, train_examples, val_examples, eval_bs, pad_id, ref_cache,
                          progress=progress)
    _rewind_metrics(run_dir, resumed if resumed is not None else -1)
    baseline = float(np.mean([e.reward for e in train_examples])) if objective.kind == "fudge" else None

    def validate(step: int) -> dict:
        out, per_example = _validate(fns, objective, state, frozen, val_examples, eval_bs, pad_id, baseline,
                                     None if cfg.reference_logprobs == "precompute" else ref_model)
        _log(run_dir, {"step": step, "split": "val", **out})
        _save_per_example(run_dir / "validation" / f"{step}.npz", per_example)
        return out

    meta = lambda: {"data": batches.state(), "fingerprint": cfg.fingerprint()}  # noqa: E731
    if resumed is None and val_examples:
        # The starting point is a candidate too: if no step beats it on validation, the best checkpoint is the
        # untouched model (for DPO: the reference itself, i.e. no guidance) rather than an overfitted one.
        checkpoints.save(0, state, meta(), _prefixed(validate(0)))
    bar = _progress(progress, start, total)
    stop_signal = _InterruptOnSigterm()
    step, window, last_val = start, _Window(), None
    try:
        with stop_signal:
            while step < end:
                batch = next(batches)
                if objective.kind == "dpo" and cfg.reference_logprobs == "per_batch":
                    batch["ref_logprobs"] = to_host(fns.reference(ref_model.params, fns.batch_sharding(batch)))
                state, metrics = settle(fns.train(state, frozen, fns.batch_sharding(batch)), mesh)
                step += 1
                window.add(metrics, int(batch["mask"].sum()))
                if step % cfg.log_every == 0 or step == total:
                    line = window.flush()
                    _log(run_dir, {"step": step, "split": "train", **line})
                    bar.set_postfix({k: f"{line[k]:.4g}" for k in ("loss", "accuracy", "tokens_per_s") if k in line})
                bar.update(1)
                validated = bool(val_examples) and (step % cfg.eval_every == 0 or step == total)
                if validated:
                    last_val = validate(step)
                if step % cfg.save_every == 0 or step == total:
                    checkpoints.save(step, state, meta(), _prefixed(last_val) if validated else None)
    except (KeyboardInterrupt, _Interrupt):
        checkpoints.wait()
        if checkpoints.latest_step() != step:
            checkpoints.save(step, state, meta(), wait=True)
        bar.close()
        checkpoints.close()
        raise KeyboardInterrupt(f"training stopped at step {step}; checkpoint saved in {run_dir / 'checkpoints'}"
                                ) from None
    bar.close()
    checkpoints.wait()
    if step < total:
        if checkpoints.latest_step() != step:
            checkpoints.save(step, state, meta(), wait=True)
        checkpoints.close()
        return TrainResult(run_dir, step, None, None, None, model.with_params(join_params(state["params"], frozen)))
    best = checkpoints.best_step() if cfg.select == "best" else step
    if best != step:
        state = {**state, "params": checkpoints.restore_params(best, state["params"])}
    best_metrics = checkpoints.manager.metrics(best) if best is not None else None
    checkpoints.close()
    trained = model.with_params(join_params(state["params"], frozen))
    export_dir = None
    if cfg.export and jax.process_index() == 0:
        from ivg_jax.loading import export_hf

        export_dir = run_dir / "export"
        export_hf(trained, export_dir)
    return TrainResult(run_dir, step, best, best_metrics, export_dir, trained)


def _prefixed(metrics: dict | None) -> dict | None:
    return None if metrics is None else {f"val_{k}": v for k, v in metrics.items()}


def _check_config(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuses to resume a run directory that holds a job with other settings (before any model loads)."""
    path = run_dir / "config.json"
    if path.exists():
        previous = json.loads(path.read_text()).get("fingerprint", {})
        changed = {k: (previous.get(k), v) for k, v in cfg.fingerprint().items() if previous.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise CheckpointError(f"{run_dir} holds a run with different settings ({detail}); use a new output_dir "
                                  "or the original settings to resume")
    elif run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"output_dir {run_dir} is a file; pass a directory")


def _write_config(cfg: TrainConfig, run_dir: Path) -> None:
    path = run_dir / "config.json"
    if jax.process_index() == 0 and not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")  # atomic: other processes of a multi-host job may read it meanwhile
        tmp.write_text(json.dumps({"config": dataclasses.asdict(cfg), "fingerprint": cfg.fingerprint()}, indent=2))
        os.replace(tmp, path)


def _rewind_metrics(run_dir: Path, step: int) -> None:
    """Drops the metrics logged after `step` (the checkpoint a run resumes from; -1 = a fresh start): those steps
    run again, and each step must appear in metrics.jsonl once. A torn last line (killed mid-write) goes too."""
    path = run_dir / "metrics.jsonl"
    if jax.process_index() != 0 or not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", -1) <= step:
            kept.append(line + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _log(run_dir: Path, record: dict) -> None:
    if jax.process_index() != 0:
        return
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def _plain(v):
    return v.item() if hasattr(v, "item") else v


class _Window:
    """Means of the step metrics since the last log line, and tokens/s over the same wall time."""

    def __init__(self):
        self.sums, self.n, self.tokens, self.t0 = {}, 0, 0, time.perf_counter()

    def add(self, metrics: dict, tokens: int):
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.n, self.tokens = self.n + 1, self.tokens + tokens

    def flush(self) -> dict:
        elapsed = time.perf_counter() - self.t0
        line = {k: v / max(self.n, 1) for k, v in self.sums.items() if k != "tokens"}
        line["tokens_per_s"] = self.tokens / max(elapsed, 1e-9)
        self.__init__()
        return line


def _progress(enabled: bool, start: int, total: int, desc: str | None = None, unit: str = "step"):
    """The training steps' bar, or (`unit="example"`) a one-off pass's before the first step."""
    from ivg_jax.progress import tqdm

    return tqdm(total=total, initial=start, desc=desc, disable=not enabled or jax.process_index() != 0, unit=unit,
                dynamic_ncols=True)


class _InterruptOnSigterm:
    """SIGTERM (a preempted or cancelled job) is handled like Ctrl-C: checkpoint, then stop."""

    def __enter__(self):
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread
            pass
        return self

    @staticmethod
    def _raise(signum, frame):
        raise _Interrupt()

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def shares_bottom(model: Model, other: Model, n_layers: int) -> bool:
    """Whether `other` has bitwise the same embeddings and bottom `n_layers` blocks (so the same trunk output)."""
    if other is model:
        return True
    if other.config != model.config:
        return False
    mine, theirs = (split_params(m.params, n_layers)[1] for m in (model, other))
    equal = jax.tree.map(lambda a, b: a.shape == b.shape and bool(jnp.array_equal(a, b)), mine, theirs)
    return all(jax.tree.leaves(equal))


def attach_trunk(model: Model, n_layers: int, examples, batch_size: int, pad_id: int, mesh=None,
                 rules=None, progress: bool = False) -> None:
    """Runs the frozen bottom `n_layers` blocks once per example and keeps their output [T, D] per sequence on
    the host (`Example.trunk`), so each train step runs only the trained top blocks: exact, since the frozen
    blocks never change; host memory = tokens x d_model x dtype bytes (about 2.3 kB a token for SmolLM2)."""
    from ivg_jax.model.transformer import trunk_forward
    from ivg_jax.sharding import put

    rules_kw = {} if rules is None else {"rules": rules}
    bar = _progress(progress, 0, len(examples), "frozen blocks (once)", unit="example")
    for i, (batch, n) in enumerate(data_lib.fixed_batches(examples, batch_size, pad_id)):
        tokens, mask = (put(batch[k], ("batch", None), mesh, **rules_kw) for k in ("tokens", "mask"))
        hidden = to_host(trunk_forward(model.graphdef, model.params, tokens, mask, n_layers))  # [n_seq * B, T, D]
        for j, e in enumerate(examples[i * batch_size:i * batch_size + n]):
            e.trunk = tuple(hidden[s * batch_size + j, :len(ids)] for s, (ids, _) in enumerate(e.sequences))
        bar.update(n)
    bar.close()



def _attach_reference(fns, ref_model: Model, train_examples, val_examples, batch_size: int, pad_id: int,
                      cache: Path, progress: bool = False) -> None:
    """Reference log-probs of every train and validation pair, computed once (and cached in the run directory
    so a resume does not recompute them)."""
    examples = list(train_examples) + list(val_examples)
    if cache.exists():
        logps = np.load(cache)["logprobs"]
        if logps.shape != (len(examples), 2):
            raise CheckpointError(f"{cache} has reference log-probs for {logps.shape[0]} pairs, the data has "
                                  f"{len(examples)}; delete it to recompute")
    else:
        logps = np.zeros((len(examples), 2), np.float32)
        bar = _progress(progress, 0, len(examples), "reference log-probs (once)", unit="example")
        for i, (batch, n) in enumerate(data_lib.fixed_batches(examples, batch_size, pad_id)):
            out = to_host(fns.reference(ref_model.params, fns.batch_sharding(batch)))
            b = len(out) // 2
            logps[i * batch_size:i * batch_size + n] = np.stack([out[:b], out[b:]], 1)[:n]
            bar.update(n)
        bar.close()
        if jax.process_index() == 0:
            np.savez(cache, logprobs=logps)
    for e, lp in zip(examples, logps):
        e.ref_logprobs = (float(lp[0]), float(lp[1]))


def _validate(fns, objective: Objective, state, frozen, examples, batch_size: int, pad_id: int,
              baseline: float | None, ref_model: Model | None) -> dict:
    """Aggregate validation metrics over every example (one pass, per-example outputs gathered on host)."""
    rows: dict[str, list] = {}
    for batch, n in data_lib.fixed_batches(examples, batch_size, pad_id):
        if ref_model is not None:
            batch["ref_logprobs"] = to_host(fns.reference(ref_model.params, fns.batch_sharding(batch)))
        metrics = fns.evaluate(state, frozen, fns.batch_sharding(batch))
        per_example = _per_example(objective, metrics, batch)
        for k, v in per_example.items():
            rows.setdefault(k, []).append(np.asarray(v)[:n])
    cat = {k: np.concatenate(v) for k, v in rows.items()}
    return summarize(objective, cat, examples, baseline), cat


def _save_per_example(path: Path, arrays: dict) -> None:
    """validation/<step>.npz: each validation example's outputs in file order (DPO: implicit rewards `chosen`,
    `rejected`; reward models: scores; FUDGE: `end_score`, `sq_error`; SFT: `nll`, `tokens`), for analyses the
    summary cannot do (e.g. accuracy against other labels)."""
    if jax.process_index() != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _per_example(objective: Objective, metrics: dict, batch: dict) -> dict:
    if objective.kind == "fudge":
        return {"sq_error": to_host(metrics["per_sequence"]), "end_score": to_host(metrics["end_score"]),
                "reward": batch["reward"]}
    if objective.kind == "reward":
        return {"chosen": to_host(metrics["score_chosen"]), "rejected": to_host(metrics["score_rejected"])}
    if objective.kind == "sft":
        return {"nll": to_host(metrics["row_nll"]), "tokens": to_host(metrics["row_tokens"])}
    return {"chosen": to_host(metrics["pair_chosen_reward"]), "rejected": to_host(metrics["pair_rejected_reward"])}


def summarize(objective: Objective, cat: dict, examples, baseline: float | None) -> dict:
    if objective.kind == "fudge":
        rewards = cat["reward"]
        groups = np.asarray([e.group for e in examples])
        return {"mse": float(cat["sq_error"].mean()),
                "baseline_mse": float(np.mean((rewards - baseline) ** 2)),
                "pairwise_accuracy": pairwise_accuracy(cat["end_score"], rewards, groups)}
    if objective.kind == "sft":
        return {"loss": float(cat["nll"].sum() / max(cat["tokens"].sum(), 1))}
    margin = cat["chosen"] - cat["rejected"]
    smoothing = objective.label_smoothing if objective.kind == "dpo" else 0.0
    loss = (1 - smoothing) * np.logaddexp(0.0, -margin) + smoothing * np.logaddexp(0.0, margin)
    out = {"loss": float(loss.mean()), "accuracy": float((margin > 0).mean()), "margin": float(margin.mean())}
    if objective.kind == "dpo":
        out |= {"chosen_reward": float(cat["chosen"].mean()), "rejected_reward": float(cat["rejected"].mean())}
    return out


def pairwise_accuracy(scores: np.ndarray, rewards: np.ndarray, groups: np.ndarray) -> float:
    """Fraction of same-prompt response pairs with different gold rewards that the scores order correctly."""
    right = total = 0
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                i, j = idx[a], idx[b]
                if rewards[i] == rewards[j]:
                    continue
                total += 1
                right += (scores[i] - scores[j]) * (rewards[i] - rewards[j]) > 0
    return float(right / total) if total else math.nan
