"""The optimiser: Optax AdamW with warmup + cosine/linear decay, global-norm clipping, decoupled weight decay
on matrices only, and gradient accumulation (`optax.MultiSteps`)."""

from __future__ import annotations

import dataclasses

import jax
import optax

from ivg_jax.errors import InputError, require_finite

SCHEDULES = ("cosine", "linear", "constant")
# Parameters that are scales or offsets, not projections: no weight decay (they are 2-D only because the blocks
# are stacked on a layers axis, so the usual ndim >= 2 rule would decay them).
_NO_DECAY = ("norm", "bias", "scale")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.25
    schedule: str = "cosine"
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 1.0
    grad_accum: int = 1

    def __post_init__(self):
        require_finite(self, ("learning_rate", "warmup_ratio", "weight_decay", "b1", "b2", "eps", "clip_norm"))
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {SCHEDULES}; got {self.schedule!r}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise InputError(f"warmup_ratio must lie in [0, 1]; got {self.warmup_ratio}")
        if self.learning_rate <= 0:
            raise InputError(f"learning_rate must be > 0; got {self.learning_rate}")
        if self.grad_accum < 1:
            raise InputError(f"grad_accum must be >= 1; got {self.grad_accum}")


def learning_rate_schedule(cfg: OptimConfig, updates: int) -> optax.Schedule:
    """Linear warmup over `warmup_ratio` of the optimiser updates, then cosine or linear decay to 0."""
    warmup = int(round(cfg.warmup_ratio * updates))
    decay = max(updates - warmup, 1)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.learning_rate, decay)
    else:
        after = optax.linear_schedule(cfg.learning_rate, 0.0, decay)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), after], [warmup])


def decay_mask(params) -> dict:
    def decays(path, _):
        names = [str(getattr(p, "key", p)) for p in path]
        return not any(tag in n for n in names for tag in _NO_DECAY)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimConfig, micro_steps: int) -> optax.GradientTransformation:
    """`micro_steps` is the number of train-step calls; the schedule counts optimiser updates
    (micro_steps / grad_accum)."""
    updates = max(micro_steps // cfg.grad_accum, 1)
    chain = []
    if cfg.clip_norm:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    chain.append(optax.adamw(learning_rate_schedule(cfg, updates), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    tx = optax.chain(*chain)
    return optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum) if cfg.grad_accum > 1 else tx
