"""Jitted, sharded train and eval steps for the four objectives (SFT, DPO, FUDGE token values, Bradley-Terry).

The state crossing the jit boundary is a plain dict `{"step", "params", "opt_state"}` holding only the
*trainable* weights; the frozen rest (the bottom blocks and embeddings in top-N training, nothing in full
fine-tuning) is a separate argument that is never differentiated nor given optimiser state.

Batches (from `data.collate`): tokens, mask, loss_mask [R, T] with R = B rows, or 2B for pairs stacked
chosen-first; reward [B]; for DPO also ref_logprobs [2B] (summed reference log-probs of the same rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ivg_jax.errors import InputError, require_finite
from ivg_jax.model.transformer import train_forward
from ivg_jax.sharding import constrain, named_sharding, param_logical_axes, put
from ivg_jax.training import losses

OBJECTIVES = ("sft", "dpo", "fudge", "reward")
HEAD_OF = {"sft": "lm", "dpo": "lm", "fudge": "value", "reward": "scalar"}
_HEADS = ("lm_head", "value_head", "score_head", "final_norm")


@dataclasses.dataclass(frozen=True)
class Objective:
    kind: str
    beta: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise InputError(f"objective must be one of {OBJECTIVES}; got {self.kind!r}")
        require_finite(self, ("beta", "label_smoothing"))
        if self.beta <= 0:
            raise InputError(f"DPO beta must be > 0; got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise InputError(f"label_smoothing must lie in [0, 0.5); got {self.label_smoothing}")

    @property
    def paired(self) -> bool:
        return self.kind in ("dpo", "reward")


def frozen_layer_count(n_layers: int, train_top_blocks: int | None) -> int:
    if train_top_blocks is None:
        return 0
    if not 1 <= train_top_blocks <= n_layers:
        raise InputError(f"train_top_blocks must lie in [1, {n_layers}] for this {n_layers}-block model; "
                         f"got {train_top_blocks}")
    return n_layers - train_top_blocks


def split_params(params: dict, frozen_layers: int) -> tuple[dict, dict]:
    """-> (trainable, frozen). With frozen_layers = 0 everything trains. Otherwise the top blocks, the final
    norm and an untied head train; embeddings (and so a tied LM head) and the bottom blocks stay frozen."""
    if frozen_layers == 0:
        return params, {}
    trainable = {k: v for k, v in params.items() if k in _HEADS}
    frozen = {k: v for k, v in params.items() if k not in _HEADS and k != "blocks"}
    trainable["blocks"] = jax.tree.map(lambda a: a[frozen_layers:], params["blocks"])
    frozen["blocks"] = jax.tree.map(lambda a: a[:frozen_layers], params["blocks"])
    return trainable, frozen


def join_params(trainable: dict, frozen: dict) -> dict:
    if not frozen:
        return trainable
    params = {**frozen, **{k: v for k, v in trainable.items() if k != "blocks"}}
    params["blocks"] = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), frozen["blocks"], trainable["blocks"])
    return params


def aligned_targets(batch: dict) -> tuple[jax.Array, jax.Array]:
    """-> (targets, target_mask) [R, W]: the token each window position predicts (window + 1) and whether it is
    a real target. `batch["window"]` [R, W] (from `data.response_window`; -1 = padding) names the positions."""
    window = batch["window"]
    valid = window >= 0
    nxt = jnp.where(valid, window + 1, 0)
    targets = jnp.take_along_axis(batch["tokens"], nxt, axis=1)
    return targets, valid & jnp.take_along_axis(batch["loss_mask"], nxt, axis=1)


def objective_outputs(objective: Objective, out: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    """Head output + batch -> (loss, metrics incl. per-example arrays for validation). `out` is [R, W, ...] at
    the response window for the token objectives (sft, dpo, fudge) and [R, T] for the reward model."""
    if objective.kind == "reward":
        half = batch["tokens"].shape[0] // 2
        scores = losses.end_scores(out, batch["loss_mask"])
        loss, metrics = losses.bradley_terry_loss(scores[:half], scores[half:])
        return loss, {**metrics, "score_chosen": scores[:half], "score_rejected": scores[half:]}
    targets, target_mask = aligned_targets(batch)
    if objective.kind == "sft":
        return losses.sft_loss(out, targets, target_mask)
    if objective.kind == "fudge":
        return losses.fudge_loss(out, targets, target_mask, batch["reward"])
    half = targets.shape[0] // 2
    logps = losses.sequence_logprobs(out, targets, target_mask)
    ref = batch["ref_logprobs"]
    return losses.dpo_loss(logps[:half], logps[half:], ref[:half], ref[half:], objective.beta,
                           objective.label_smoothing)


def head_window(objective: Objective, batch: dict) -> jax.Array | None:
    """Where the head is applied: the response window for token objectives, everywhere for the reward model."""
    return None if objective.kind == "reward" else jnp.maximum(batch["window"], 0)


_SCALARS = ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward", "tokens")


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k in _SCALARS}


@dataclasses.dataclass
class StepFns:
    """The compiled functions of one training job."""

    init: Callable
    train: Callable
    evaluate: Callable
    reference: Callable | None
    batch_sharding: Callable


def build_steps(objective: Objective, graphdef, optimizer: optax.GradientTransformation, frozen_layers: int,
                mesh=None, rules=None, ref_graphdef=None, reference_uses_trunk: bool = False) -> StepFns:
    """train(state, frozen, batch) -> (state, scalar metrics); evaluate(state, frozen, batch) -> metrics with
    per-example arrays; reference(ref_params, batch) -> [2B] summed log-probs (DPO only). Batches with a
    "trunk" (the frozen blocks' output) skip those blocks; so does the reference when `reference_uses_trunk`
    (its embeddings and bottom blocks are bitwise the policy's)."""
    rules_kw = {} if rules is None else {"rules": rules}

    def shard_batch(batch: dict) -> dict:
        return {k: put(v, ("batch",) + (None,) * (np.ndim(v) - 1), mesh, **rules_kw) for k, v in batch.items()}

    def loss_fn(trainable, frozen, batch):
        batch = {k: constrain(v, ("batch",) + (None,) * (v.ndim - 1), mesh, **rules_kw) for k, v in batch.items()}
        out = train_forward(graphdef, join_params(trainable, frozen), batch["tokens"], batch["mask"], frozen_layers,
                            trunk=batch.get("trunk"), window=head_window(objective, batch))
        return objective_outputs(objective, out, batch)

    def train(state, frozen, batch):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], frozen, batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        scalars = _scalars(metrics) | {"grad_norm": optax.global_norm(grads)}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, scalars

    def evaluate(state, frozen, batch):
        return loss_fn(state["params"], frozen, batch)[1]

    def init(trainable):
        return {"step": jnp.zeros((), jnp.int32), "params": trainable, "opt_state": optimizer.init(trainable)}

    reference = None
    if objective.kind == "dpo":
        rg = ref_graphdef if ref_graphdef is not None else graphdef

        @jax.jit
        def reference(ref_params, batch):
            trunk = batch["trunk"] if reference_uses_trunk else None
            out = train_forward(rg, ref_params, batch["tokens"], batch["mask"], frozen_layers if trunk is not None
                                else 0, trunk=trunk, window=head_window(objective, batch))
            return losses.sequence_logprobs(out, *aligned_targets(batch))

    return StepFns(jax.jit(init), jax.jit(train, donate_argnums=(0,)), jax.jit(evaluate), reference, shard_batch)


def shard_model_params(params: dict, abstract_state, mesh, rules=None, frozen_layers: int = 0):
    """Places a (trainable or frozen) params dict on the mesh by the model's logical axes; the stacked blocks
    may be any slice of the layers axis."""
    if mesh is None:
        return params
    axes = param_logical_axes(abstract_state)
    rules_kw = {} if rules is None else {"rules": rules}

    def place(path, leaf):
        key = tuple(str(getattr(p, "key", p)) for p in path)
        return jax.device_put(leaf, named_sharding(axes[key], leaf.shape, mesh, **rules_kw))

    return jax.tree_util.tree_map_with_path(place, params)
