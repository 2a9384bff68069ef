"""Exact resume (N steps straight == N/2, stop, resume, N/2: identical params and losses) and crash safety of
checkpoints (SIGKILL during an async save leaves the previous checkpoint loadable)."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from synthetic import preference_records, scored_records, tiny_model, write_jsonl

import ivg_jax
from ivg_jax.training import TrainConfig, train
from ivg_jax.training.checkpoint import Checkpoints

CASES = {
    "dpo-full-precomputed": dict(objective="dpo", reference_logprobs="precompute"),
    "dpo-per-batch-reference": dict(objective="dpo", reference_logprobs="per_batch", train_top_blocks=1),
    "fudge-top1-accumulate": dict(objective="fudge", train_top_blocks=1, grad_accum=2),
}


def _losses(run_dir):
    lines = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    return {x["step"]: x["loss"] for x in lines if x["split"] == "train"}


@pytest.mark.parametrize("case", list(CASES))
def test_stop_and_resume_equals_straight_run(tmp_path, case):
    kw = CASES[case]
    records = preference_records(96, 0) if kw["objective"] == "dpo" else scored_records(96, 0)
    data = write_jsonl(tmp_path / "train.jsonl", records)
    val = write_jsonl(tmp_path / "val.jsonl", records[:16])
    base = tiny_model(seed=0, n_layers=3)

    def cfg(name):
        return TrainConfig(train_data=data, val_data=val, output_dir=str(tmp_path / name), batch_size=8, steps=8,
                           learning_rate=1e-2, eval_every=2, save_every=4, max_length=16, export=False, **kw)

    straight = train(cfg("straight"), model=base, progress=False)
    first = train(cfg("resumed"), model=base, progress=False, stop_at_step=3)
    assert first.final_step == 3 and Checkpoints(tmp_path / "resumed" / "checkpoints").latest_step() == 3
    resumed = train(cfg("resumed"), model=base, progress=False)
    assert resumed.final_step == straight.final_step == 8
    assert resumed.best_step == straight.best_step
    for a, b in zip(jax.tree.leaves(straight.model.params), jax.tree.leaves(resumed.model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    assert len(_losses(tmp_path / "straight")) == 8


def test_resume_with_changed_settings_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", preference_records(32, 0))
    cfg = TrainConfig(objective="dpo", train_data=data, output_dir=str(tmp_path / "run"), batch_size=8, steps=4,
                      max_length=16, export=False)
    train(cfg, model=tiny_model(), progress=False, stop_at_step=1)
    changed = TrainConfig(**{**cfg.__dict__, "learning_rate": 1e-3})
    with pytest.raises(Exception, match="learning_rate: 0.0005 -> 0.001"):
        train(changed, model=tiny_model(), progress=False)


def test_sigkill_during_save_leaves_previous_checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "checkpoint_kill_job.py"),
                             str(directory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    for line in proc.stdout:
        if line.startswith("SAVING"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    ckpt = Checkpoints(directory)
    assert ckpt.latest_step() == 1, "the half-written step 2 must not be listed as a checkpoint"
    state, meta = ckpt.restore(1, {"w": jax.numpy.zeros(8)})
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(8.0))
    assert meta["data"] == {"epoch": 0, "batch": 1}


def test_best_checkpoint_can_be_the_starting_point(tmp_path):
    """A run that only gets worse on validation returns (and exports) the untouched model."""
    data = write_jsonl(tmp_path / "train.jsonl", preference_records(32, 0))
    val = write_jsonl(tmp_path / "val.jsonl", preference_records(16, 1))
    base = tiny_model(seed=0)
    result = train(TrainConfig(objective="dpo", train_data=data, val_data=val, output_dir=str(tmp_path / "run"),
                               batch_size=8, steps=4, learning_rate=50.0, warmup_ratio=0.0, clip_norm=None,
                               eval_every=2, save_every=2, max_length=16, export=False), model=base, progress=False)
    assert result.best_step == 0 and result.final_step == 4
    assert result.best_metrics["val_loss"] == pytest.approx(np.log(2), abs=1e-6)  # policy == reference
    for a, b in zip(jax.tree.leaves(base.params), jax.tree.leaves(result.model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_select_final_returns_the_last_step_even_when_validation_prefers_the_start(tmp_path):
    """The same run as above with select="final": the weights of step 4 (a straight run without validation has
    them too), its own validation metrics, and the export is those weights."""
    data = write_jsonl(tmp_path / "train.jsonl", preference_records(32, 0))
    val = write_jsonl(tmp_path / "val.jsonl", preference_records(16, 1))
    base = tiny_model(seed=0)
    common = dict(objective="dpo", train_data=data, batch_size=8, steps=4, learning_rate=50.0, warmup_ratio=0.0,
                  clip_norm=None, save_every=2, max_length=16)
    final = train(TrainConfig(val_data=val, output_dir=str(tmp_path / "final"), eval_every=2, select="final",
                              **common), model=base, progress=False)
    plain = train(TrainConfig(output_dir=str(tmp_path / "plain"), export=False, **common), model=base,
                  progress=False)
    assert final.best_step == final.final_step == 4
    assert final.best_metrics["val_loss"] > np.log(2)  # worse than the start, which "best" would have returned
    exported = ivg_jax.load_model(str(final.export_dir))
    for a, b, c in zip(jax.tree.leaves(plain.model.params), jax.tree.leaves(final.model.params),
                       jax.tree.leaves(exported.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(np.asarray(c), np.asarray(b), rtol=0, atol=0)


@pytest.mark.parametrize("higher_is_better, best", [(False, 2), (True, 3)])
def test_keeps_the_latest_and_the_best(tmp_path, higher_is_better, best):
    ckpt = Checkpoints(tmp_path / "c", keep_last=1, best_metric="val_x", higher_is_better=higher_is_better)
    for step, value in zip(range(1, 6), [3.0, 1.0, 9.0, 2.0, 5.0]):
        ckpt.save(step, {"w": jax.numpy.full(2, float(step))}, {"data": {}}, {"val_x": value})
    ckpt.wait()
    assert sorted(ckpt.manager.all_steps()) == sorted({best, 5}) and ckpt.best_step() == best
    ckpt.close()


def test_metrics_hold_each_step_once_after_a_crash(tmp_path):
    """A crash after step 6 was logged but before its checkpoint was complete: the rerun resumes from step 4 and
    replays 5-6; metrics.jsonl must then hold every step once, exactly as an uninterrupted run's."""
    import shutil

    data = write_jsonl(tmp_path / "train.jsonl", preference_records(64, 0))
    val = write_jsonl(tmp_path / "val.jsonl", preference_records(8, 1))
    base = tiny_model(seed=0)

    def cfg(name):
        return TrainConfig(objective="dpo", train_data=data, val_data=val, output_dir=str(tmp_path / name),
                           batch_size=8, steps=8, learning_rate=1e-2, eval_every=2, save_every=4, max_length=16,
                           keep_last=3, export=False)

    train(cfg("straight"), model=base, progress=False)
    train(cfg("crashed"), model=base, progress=False, stop_at_step=6)
    shutil.rmtree(tmp_path / "crashed" / "checkpoints" / "6")
    with open(tmp_path / "crashed" / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "split": "tra')  # torn by the crash
    assert Checkpoints(tmp_path / "crashed" / "checkpoints").latest_step() == 4
    train(cfg("crashed"), model=base, progress=False)

    def steps(name):
        rows = [json.loads(x) for x in open(tmp_path / name / "metrics.jsonl")]
        return [(r["split"], r["step"]) for r in rows]

    assert steps("crashed") == steps("straight")
    assert len(set(steps("straight"))) == len(steps("straight"))


def test_a_refused_run_leaves_no_config(tmp_path):
    """Bad input found after the cheap checks (here: a model path that does not exist) must not leave a config
    that refuses the corrected rerun as 'a run with different settings'."""
    data = write_jsonl(tmp_path / "train.jsonl", preference_records(16, 0))
    bad = TrainConfig(objective="dpo", train_data=data, output_dir=str(tmp_path / "run"), model="/nonexistent/m",
                      batch_size=8, steps=1, max_length=16, export=False)
    with pytest.raises(Exception, match="nonexistent"):
        train(bad, progress=False)
    assert not (tmp_path / "run" / "config.json").exists()
    fixed = TrainConfig(**{**bad.__dict__, "model": ""})
    assert train(fixed, model=tiny_model(), progress=False).final_step == 1
