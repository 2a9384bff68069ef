"""Learning on a task with a known answer (reward = count of the marker word): the DPO pair ranks held-out
preferred responses first, the value model beats the constant predictor, and decoding with the trained guides
raises the reward over the untuned base. Also: the trained guides round-trip through the HF export."""

import numpy as np
import pytest
import torch
import transformers
from synthetic import MARKER, WORDS, preference_records, reward, scored_records, tiny_model, write_jsonl

import ivg_jax
from ivg_jax.training import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("learn")
    base = tiny_model(seed=0)
    dpo = train(TrainConfig(
        objective="dpo", train_data=write_jsonl(d / "pref_train.jsonl", preference_records(384, seed=0)),
        val_data=write_jsonl(d / "pref_val.jsonl", preference_records(128, seed=1)), output_dir=str(d / "dpo"),
        batch_size=16, steps=72, learning_rate=3e-3, warmup_ratio=0.1, eval_every=24, save_every=24,
        max_length=16), model=base, progress=False)
    fudge = train(TrainConfig(
        objective="fudge", train_data=write_jsonl(d / "scored_train.jsonl", scored_records(512, seed=2)),
        val_data=write_jsonl(d / "scored_val.jsonl", scored_records(128, seed=3)), output_dir=str(d / "fudge"),
        batch_size=16, steps=160, learning_rate=3e-3, warmup_ratio=0.1, eval_every=40, save_every=40,
        max_length=16), model=base, progress=False)
    return base, dpo, fudge


def test_dpo_ranks_held_out_pairs(trained):
    _, dpo, _ = trained
    assert dpo.best_metrics["val_accuracy"] >= 0.9
    assert dpo.best_metrics["val_margin"] > 0


def test_value_model_beats_constant_prediction(trained):
    _, _, fudge = trained
    m = fudge.best_metrics
    # Optimal prefix values leave 0.225 of the constant predictor's 0.75 (4 words, p = 1/4): ratio 0.3.
    assert m["val_mse"] < 0.5 * m["val_baseline_mse"], m
    assert m["val_pairwise_accuracy"] > 0.85, m


def _mean_reward(gen) -> float:
    return float(np.mean([reward(t) for t in gen.texts]))


def test_decoding_with_trained_guides_raises_reward(trained):
    base, dpo, fudge = trained
    prompts = [" ".join(WORDS[4 + (i % 20):6 + (i % 20)]) for i in range(32)]
    kw = dict(max_new_tokens=4, sampling=ivg_jax.Sampling(temperature=1.0), seed=11, stop_ids=[1])
    plain = ivg_jax.generate(base, prompts, **kw)
    implicit = ivg_jax.Guidance(implicit=[ivg_jax.ImplicitGuide(dpo.model, base, weight=1.0)], token="implicit")
    eft = ivg_jax.generate(base, prompts, implicit, **kw)
    explicit = ivg_jax.Guidance(explicit=ivg_jax.ExplicitGuide(fudge.model), chunk="explicit")
    cbs = ivg_jax.generate(base, prompts, explicit, search=ivg_jax.Search(2, 4, 2), **kw)
    r_plain, r_eft, r_cbs = _mean_reward(plain), _mean_reward(eft), _mean_reward(cbs)
    assert r_eft > r_plain + 0.3, (r_plain, r_eft)
    assert r_cbs > r_plain + 0.3, (r_plain, r_cbs)
    assert MARKER in " ".join(eft.texts)


def test_trained_guides_export_to_transformers(trained):
    _, dpo, fudge = trained
    ids = [[4, 5, 3, 6, 7]]
    for result in (dpo, fudge):
        ours = np.asarray(ivg_jax.forward(ivg_jax.load_model(str(result.export_dir)), np.asarray(ids)))
        hf = transformers.AutoModelForCausalLM.from_pretrained(result.export_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = hf(torch.tensor(ids)).logits.numpy()
        np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=2e-4)
        np.testing.assert_allclose(ours, np.asarray(ivg_jax.forward(result.model, np.asarray(ids))), atol=1e-5)

