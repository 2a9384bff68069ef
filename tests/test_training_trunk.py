"""Top-N-block training from the cached trunk (the frozen blocks run once per example, `cache_trunk`) is the
same computation as running every block each step: same losses, validation and weights. And the reference
reuses the trunk only when its bottom is bitwise the policy's."""

import json

import jax
import numpy as np
import pytest
from synthetic import preference_records, scored_records, tiny_model, write_jsonl

from ivg_jax.training import TrainConfig, train
from ivg_jax.training.trainer import shares_bottom


def _metrics(run_dir):
    return [json.loads(x) for x in open(run_dir / "metrics.jsonl")]


def _run(tmp_path, name, objective, cache, reference=None):
    records = preference_records(48, 1) if objective == "dpo" else scored_records(48, 1)
    data = write_jsonl(tmp_path / f"{objective}.jsonl", records)
    val = write_jsonl(tmp_path / f"{objective}_val.jsonl", records[:12])
    cfg = TrainConfig(objective=objective, train_data=data, val_data=val, output_dir=str(tmp_path / name),
                      batch_size=8, steps=6, learning_rate=1e-2, eval_every=3, save_every=6, max_length=16,
                      train_top_blocks=1, cache_trunk=cache, export=False)
    return train(cfg, model=tiny_model(seed=0, n_layers=3), reference=reference, progress=False)


@pytest.mark.parametrize("objective", ["dpo", "fudge"])
def test_cached_trunk_equals_running_every_block(tmp_path, objective):
    cached, plain = (_run(tmp_path, f"{objective}-{c}", objective, c) for c in (True, False))
    a, b = _metrics(cached.run_dir), _metrics(plain.run_dir)
    assert [(x["step"], x["split"]) for x in a] == [(x["step"], x["split"]) for x in b] and len(a) >= 8
    for x, y in zip(a, b):
        for key in ("loss", "accuracy", "mse", "pairwise_accuracy"):
            if key in x:
                np.testing.assert_allclose(x[key], y[key], rtol=2e-5, atol=1e-6, err_msg=f"{key} at {x}")
    for p, q in zip(jax.tree.leaves(cached.model.params), jax.tree.leaves(plain.model.params)):
        np.testing.assert_allclose(np.asarray(p), np.asarray(q), rtol=1e-4, atol=1e-5)
    if objective == "dpo":
        ref = [np.load(r.run_dir / "reference_logprobs.npz")["logprobs"] for r in (cached, plain)]
        np.testing.assert_allclose(ref[0], ref[1], rtol=1e-5, atol=1e-5)


def test_reference_with_another_bottom_does_not_reuse_the_trunk(tmp_path):
    policy = tiny_model(seed=0, n_layers=3)
    other = tiny_model(seed=7, n_layers=3)
    assert shares_bottom(policy, policy, 2) and not shares_bottom(policy, other, 2)
    same_bottom = policy.with_params({**policy.params, "final_norm": other.params["final_norm"]})
    assert shares_bottom(policy, same_bottom, 2)
    cached, plain = (_run(tmp_path, f"ref-{c}", "dpo", c, reference=other) for c in (True, False))
    ref = [np.load(r.run_dir / "reference_logprobs.npz")["logprobs"] for r in (cached, plain)]
    np.testing.assert_allclose(ref[0], ref[1], rtol=1e-5, atol=1e-5)
