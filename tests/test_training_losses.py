"""The objectives against a numpy hand computation from the model's own log-probs / values, each sequence run
unpadded on its own (so padding, stacking and masking in the batched path are what is tested)."""

import numpy as np
import optax
import pytest
from synthetic import preference_records, scored_records, tiny_model

import ivg_jax
from ivg_jax.model.api import attach_head
from ivg_jax.training import data as data_lib
from ivg_jax.training.optim import OptimConfig, make_optimizer
from ivg_jax.training.steps import Objective, build_steps

TOK = data_lib.Tokenization("{prompt} :", max_length=16, eos_id=1)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _unpadded(model, ids):
    return np.asarray(ivg_jax.forward(model, np.asarray([ids])))[0].astype(np.float64)


def _response_logprob(model, ids, loss_mask):
    logp = _log_softmax(_unpadded(model, ids))
    return sum(logp[t - 1, ids[t]] for t in range(1, len(ids)) if loss_mask[t])


def _evaluate(objective, model, examples):
    fns = build_steps(objective, model.graphdef, optax.sgd(0.0), frozen_layers=0)
    state = fns.init(model.params)
    batch = data_lib.collate(examples, pad_id=0, multiple=16)
    return fns, state, batch


def _perturbed(model, seed):
    rng = np.random.default_rng(seed)
    return model.with_params(
        __import__("jax").tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape).astype(a.dtype), model.params))


def test_dpo_loss_rewards_accuracy_match_numpy():
    reference = tiny_model(seed=0)
    policy = _perturbed(reference, 1)
    examples = data_lib.tokenize(preference_records(6, seed=3), "preference", reference.tokenizer, TOK)
    beta, eps = 0.3, 0.1
    objective = Objective("dpo", beta, eps)
    fns, state, batch = _evaluate(objective, policy, examples)
    batch["ref_logprobs"] = np.asarray(fns.reference(reference.params, batch))
    got = fns.evaluate(state, {}, batch)

    lp = {(m, s): np.asarray([_response_logprob(model, *e.sequences[s]) for e in examples])
          for m, model in (("pol", policy), ("ref", reference)) for s in (0, 1)}
    np.testing.assert_allclose(batch["ref_logprobs"], np.concatenate([lp["ref", 0], lp["ref", 1]]), rtol=1e-5)
    chosen_reward = beta * (lp["pol", 0] - lp["ref", 0])
    rejected_reward = beta * (lp["pol", 1] - lp["ref", 1])
    m = chosen_reward - rejected_reward
    log_sig = lambda x: -np.logaddexp(0, -x)  # noqa: E731
    loss = np.mean(-(1 - eps) * log_sig(m) - eps * log_sig(-m))
    assert 0 < (m > 0).mean() < 1, "the fixed batch should have both outcomes for accuracy to be tested"
    np.testing.assert_allclose(float(got["loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(float(got["accuracy"]), (m > 0).mean())
    np.testing.assert_allclose(np.asarray(got["pair_chosen_reward"]), chosen_reward, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got["pair_rejected_reward"]), rejected_reward, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(got["margin"]), m.mean(), rtol=1e-4, atol=1e-6)


def test_fudge_loss_and_end_scores_match_numpy():
    value = _perturbed(attach_head(tiny_model(seed=0), "value", scale=0.3, seed=5), 2)
    records = scored_records(6, seed=4)
    records[1]["eos"] = False  # a truncated response: no EOS position
    examples = data_lib.tokenize(records, "scored", value.tokenizer, TOK)
    assert examples[1].sequences[0][0][-1] != 1 and examples[0].sequences[0][0][-1] == 1
    fns, state, batch = _evaluate(Objective("fudge"), value, examples)
    got = fns.evaluate(state, {}, batch)

    per_seq, ends = [], []
    for e in examples:
        ids, mask = e.sequences[0]
        values = _unpadded(value, ids)
        q = [values[t - 1, ids[t]] for t in range(1, len(ids)) if mask[t]]
        per_seq.append(np.mean([(x - e.reward) ** 2 for x in q]))
        ends.append(q[-1])
    np.testing.assert_allclose(float(got["loss"]), np.mean(per_seq), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got["end_score"]), ends, rtol=1e-5, atol=1e-6)


def test_bradley_terry_and_sft_losses_match_numpy():
    scorer = _perturbed(attach_head(tiny_model(seed=0), "scalar", scale=0.5, seed=6), 3)
    examples = data_lib.tokenize(preference_records(5, seed=5), "preference", scorer.tokenizer, TOK)
    fns, state, batch = _evaluate(Objective("reward"), scorer, examples)
    got = fns.evaluate(state, {}, batch)
    end = lambda e, s: _unpadded(scorer, e.sequences[s][0])[-1]  # noqa: E731
    m = np.asarray([end(e, 0) - end(e, 1) for e in examples])
    np.testing.assert_allclose(float(got["loss"]), np.mean(np.logaddexp(0, -m)), rtol=1e-5)

    lm = tiny_model(seed=0)
    texts = [{"text": "w1 w2 good w3"}, {"prompt": "w4 w5", "response": "w6 good"}]
    examples = data_lib.tokenize(texts, "sft", lm.tokenizer, TOK)
    fns, state, batch = _evaluate(Objective("sft"), lm, examples)
    got = fns.evaluate(state, {}, batch)
    nll = [-_response_logprob(lm, *e.sequences[0]) for e in examples]
    n_targets = sum(int(e.sequences[0][1].sum()) for e in examples)
    assert n_targets == (4 - 1 + 1) + (2 + 1)  # text: every token after the first + EOS; pair: response + EOS
    np.testing.assert_allclose(float(got["loss"]), sum(nll) / n_targets, rtol=1e-5)


def test_masks_cover_response_tokens_only():
    lm = tiny_model()
    tok = data_lib.Tokenization("{prompt}", max_length=16, eos_id=1)
    records = [{"prompt": "w1 w2", "response": "good w3"}, {"prompt": "w1", "response": "w3", "eos": False}]
    full, cut = data_lib.tokenize(records, "sft", lm.tokenizer, tok)
    assert lm.tokenizer.convert_ids_to_tokens(full.sequences[0][0].tolist()) == ["w1", "w2", "good", "w3", "<eos>"]
    assert full.sequences[0][1].tolist() == [False, False, True, True, True]
    assert cut.sequences[0][0].tolist() == lm.tokenizer("w1 w3")["input_ids"]
    assert cut.sequences[0][1].tolist() == [False, True]


def test_schedule_warms_up_then_decays_and_accumulates():
    cfg = OptimConfig(learning_rate=1.0, warmup_ratio=0.25, schedule="linear", weight_decay=0.0, clip_norm=None,
                      grad_accum=2)
    tx = make_optimizer(cfg, micro_steps=16)  # 8 optimiser updates: 2 warmup, 6 decay
    from ivg_jax.training.optim import learning_rate_schedule

    sched = learning_rate_schedule(cfg, 8)
    assert [float(sched(i)) for i in (0, 1, 2, 5, 8)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    params = {"w": np.ones(3, np.float32)}
    state = tx.init(params)
    updates, state = tx.update({"w": np.ones(3, np.float32)}, state, params)
    assert np.all(np.asarray(updates["w"]) == 0)  # first micro-step only accumulates
