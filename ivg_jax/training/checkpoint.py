"""Orbax checkpoints of a training run: async saves, keep-last-N plus the best by a validation metric, exact
resume.

A checkpoint holds the train state (step, trainable params, optimiser state) and a JSON record of everything
else a resume needs (data-stream position, which fixes the shuffle PRNG; the job fingerprint). Orbax writes each
step into a temporary directory and renames it only when complete, so a process killed mid-save leaves the
previous checkpoints intact and the half-written one invisible.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from ivg_jax.errors import CheckpointError

_policies = ocp.checkpoint_managers


class _QuietUnvalidatedSaves(logging.Filter):
    """Steps saved between validations carry no metrics by design (they rank below every validated step);
    Orbax warns about each one on absl's logger, which printed on every run, even with --quiet."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUnvalidatedSaves())


def _nbytes(tree) -> int:
    return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree))


def require_free_space(directory: Path, nbytes: int, what: str) -> None:
    """Refuses a write that cannot fit, before it starts: a disk that fills during an Orbax save fails in its
    background threads, with hundreds of lines of tracebacks and the process half shut down. Half again the
    payload plus 1 MiB of room covers the checkpoint format's own files."""
    directory.mkdir(parents=True, exist_ok=True)
    need = int(nbytes * 1.5) + (1 << 20)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise CheckpointError(f"{directory}: writing {what} needs about {need / 2**20:.1f} MiB but only "
                              f"{free / 2**20:.1f} MiB are free; free disk space (or use another output "
                              "directory) and rerun: training resumes from its last checkpoint")


class Checkpoints:
    """`directory/<step>/{state,meta}`; `best_metric` (e.g. "val_loss", lower is better) ranks validated steps."""

    def __init__(self, directory: str | Path, keep_last: int = 2, best_metric: str | None = None,
                 higher_is_better: bool = False, async_save: bool = True):
        if keep_last < 1:
            raise CheckpointError(f"keep_last must be >= 1; got {keep_last}")
        self.best_metric, self.higher_is_better = best_metric, higher_is_better
        policies = [_policies.LatestN(n=keep_last)]
        if best_metric:
            # BestN keeps the tail of the list sorted by the metric; reverse=True puts the lowest last (as Orbax
            # itself does for best_mode="min").
            policies.append(_policies.BestN(get_metric_fn=self._metric, reverse=not higher_is_better, n=1,
                                            keep_checkpoints_without_metrics=False))
        # best_fn also makes Orbax store the metrics with each step (it writes none without it).
        options = ocp.CheckpointManagerOptions(
            best_fn=self._metric if best_metric else None, best_mode="max" if higher_is_better else "min",
            preservation_policy=_policies.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def _metric(self, metrics) -> float:
        value = metrics.get(self.best_metric, math.nan) if metrics else math.nan
        return float(value) if math.isfinite(value) else (-math.inf if self.higher_is_better else math.inf)

    def save(self, step: int, state, meta: dict, metrics: dict | None = None, wait: bool = False) -> None:
        """Starts writing `state` (returns while the write continues in the background unless `wait`)."""
        require_free_space(Path(self.manager.directory), _nbytes(state), f"checkpoint step {step}")
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, metrics=metrics, force=True)
        if wait:
            self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The validated step with the best metric, else the latest."""
        best = self.manager.best_step() if self.best_metric else None
        return best if best is not None else self.latest_step()

    def restore(self, step: int, target_state) -> tuple[dict, dict]:
        """-> (state laid out like `target_state` — same shapes, dtypes and shardings — , meta)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        restored = self._restore(self.manager, step, ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def restore_params(self, step: int, target_params):
        """-> the `params` subtree of step's state, laid out like `target_params`, without reading the rest (the
        optimiser's moments: twice the trainable weights for AdamW). Orbax restores a subtree only through a
        manager that has not saved this item with other args, so a read-only one is opened for it."""
        abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, target_params)}
        reader = ocp.CheckpointManager(self.manager.directory, options=ocp.CheckpointManagerOptions(read_only=True))
        try:
            restored = self._restore(reader, step, ocp.args.Composite(state=ocp.args.PyTreeRestore(
                abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract), partial_restore=True)))
        finally:
            reader.close()
        return restored["state"]["params"]

    def _restore(self, manager, step: int, args):
        """Orbax's restore, its complaints about a checkpoint that does not fit the job as one CheckpointError."""
        try:
            return manager.restore(step, args=args)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(f"checkpoint step {step} in {self.manager.directory} does not match this job "
                                  f"({type(e).__name__}: {str(e)[:300]})") from e

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
