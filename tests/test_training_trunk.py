"""Top-N-block training from the cached trunk (the frozen blocks run once per example, `cache_trunk`) is the
same computation as running every block each step: same losses, validation and weights. And the reference
reuses the trunk only when its bottom is bitwise the policy's."""

import json

import jax
import numpy as np
import pytest
from synthetic import preference_records, scored_records, tiny_model, write_jsonl

from ivg_jax.training import TrainConfig, train
from ivg_jax.training.data import Batches, Example, collate
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


def test_upcoming_names_exactly_the_examples_the_next_batches_hold():
    # Each example's single token is its index, so the drawn batches say which examples they hold: the oracle.
    examples = [Example(((np.asarray([i], np.int32), np.ones(1, bool)),)) for i in range(21)]
    for skip, ahead in ((0, 2), (3, 3), (4, 5), (0, 40)):  # within an epoch, across epochs, more than all of them
        batches = Batches(examples, batch_size=4, seed=3)
        for _ in range(skip):
            next(batches)
        position = batches.state()
        predicted = batches.upcoming(ahead)
        assert batches.state() == position  # looking ahead does not advance the stream
        drawn = {int(t) for _ in range(ahead) for t in next(batches)["tokens"][:, 0]}
        assert predicted == sorted(drawn), (skip, ahead)
    assert len(Batches(examples, batch_size=4).upcoming(3)) == 12


def test_a_short_run_runs_the_frozen_blocks_only_on_what_it_reads(tmp_path, monkeypatch):
    import ivg_jax.training.trainer as trainer

    seen = []
    original = trainer.attach_trunk
    monkeypatch.setattr(trainer, "attach_trunk", lambda model, n, examples, *a, **k: (
        seen.append(len(examples)), original(model, n, examples, *a, **k))[1])
    records = scored_records(48, 1)
    data = write_jsonl(tmp_path / "d.jsonl", records)
    val = write_jsonl(tmp_path / "v.jsonl", records[:12])
    results = {}
    for cache in (True, False):
        cfg = TrainConfig(objective="fudge", train_data=data, val_data=val, output_dir=str(tmp_path / f"r{cache}"),
                          batch_size=8, steps=2, learning_rate=1e-2, eval_every=1, max_length=16, train_top_blocks=1,
                          cache_trunk=cache, export=False)
        results[cache] = train(cfg, model=tiny_model(seed=0, n_layers=3), progress=False)
    assert seen == [2 * 8 + 12]  # two batches' examples and the validation set, not all 48
    for p, q in zip(jax.tree.leaves(results[True].model.params), jax.tree.leaves(results[False].model.params)):
        np.testing.assert_allclose(np.asarray(p), np.asarray(q), rtol=1e-4, atol=1e-5)


def test_a_batch_with_and_without_the_cached_trunk_is_refused():
    with_trunk = Example(((np.asarray([1, 2], np.int32), np.ones(2, bool)),), trunk=(np.zeros((2, 4), np.float32),))
    without = Example(((np.asarray([3], np.int32), np.ones(1, bool)),))
    with pytest.raises(ValueError, match="1 of 2 examples in a batch lack the cached trunk"):
        collate([with_trunk, without])
