"""Bad training input fails first, with the file, line and field named (the model path here does not even exist:
data checks come before any loading)."""

import json

import pytest
from synthetic import WORDS, preference_records, scored_records, tiny_model, write_jsonl

from ivg_jax.errors import InputError
from ivg_jax.training import TrainConfig, train
from ivg_jax.training.data import Tokenization, load


def _cfg(tmp_path, path, objective="dpo", **kw):
    return TrainConfig(objective=objective, train_data=str(path), output_dir=str(tmp_path / "run"),
                       model="/no/such/model", max_length=16, **kw)


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in preference_records(3)]
    lines.insert(2, '{"prompt": "w1", "chosen": "w2",')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:3: not valid JSON"):
        train(_cfg(tmp_path, path))


@pytest.mark.parametrize("record, message", [
    ({"prompt": "w1", "chosen": "w2"}, r":2: missing field 'rejected'"),
    ({"prompt": "w1", "chosen": "w2", "rejected": 5}, r":2: field 'rejected' must be a string, got int"),
    ({"prompt": "w1", "chosen": "  ", "rejected": "w3"}, r":2: field 'chosen' is empty"),
    (["w1", "w2"], r":2: expected a JSON object, got list"),
])
def test_schema_errors_name_line_and_field(tmp_path, record, message):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [preference_records(1)[0], record])
    with pytest.raises(InputError, match=message):
        train(_cfg(tmp_path, path))


def test_scored_reward_must_be_a_finite_number(tmp_path):
    path = tmp_path / "scored.jsonl"
    records = scored_records(2)
    records[1]["reward"] = "high"
    write_jsonl(path, records)
    with pytest.raises(InputError, match=r"scored.jsonl:2: field 'reward' must be a number, got str"):
        train(_cfg(tmp_path, path, objective="fudge"))
    path.write_text(json.dumps({"prompt": "w1", "response": "w2", "reward": float("nan")}) + "\n")
    with pytest.raises(InputError, match=r"scored.jsonl:1: field 'reward' is nan"):
        train(_cfg(tmp_path, path, objective="fudge"))


def test_prompt_longer_than_max_length(tmp_path):
    model = tiny_model()
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": " ".join(WORDS[4:24]), "chosen": "w1", "rejected": "w2"}])
    with pytest.raises(InputError, match=r"p.jsonl:1: the prompt is 20 tokens .* max_length "
                                         r"is 16; raise max_length"):
        load(path, "preference", model.tokenizer, Tokenization(max_length=16, eos_id=1))
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "w1", "chosen": " ".join(WORDS[4:24]), "rejected": "w2"}])
    with pytest.raises(InputError, match=r"r.jsonl:1: prompt \+ chosen is 22 tokens but max_length is 16"):
        load(path, "preference", model.tokenizer, Tokenization(max_length=16, eos_id=1))


def test_policy_and_reference_with_different_tokenizers(tmp_path):
    from oracle import word_tokenizer

    path = write_jsonl(tmp_path / "p.jsonl", preference_records(8))
    other = tiny_model()
    other.tokenizer = word_tokenizer(WORDS[:4] + WORDS[5:] + WORDS[4:5])  # same size, two ids swapped
    with pytest.raises(InputError, match="different tokenizers"):
        train(_cfg(tmp_path, path), model=tiny_model(), reference=other)


@pytest.mark.parametrize("kw, message", [
    (dict(objective="ppo"), "objective must be one of"),
    (dict(objective="fudge", reference="x"), "reference model only applies to DPO"),
    (dict(reference_logprobs="lazy"), "reference_logprobs must be one of"),
    (dict(schedule="step"), "schedule must be one of"),
    (dict(label_smoothing=0.7), r"label_smoothing must lie in \[0, 0.5\)"),
    (dict(batch_size=0), "batch_size must be >= 1"),
])
def test_bad_settings(tmp_path, kw, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**{"objective": "dpo", "train_data": "x", "output_dir": str(tmp_path), **kw})


def test_top_blocks_out_of_range(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", preference_records(8))
    with pytest.raises(InputError, match=r"train_top_blocks must lie in \[1, 2\]"):
        train(_cfg(tmp_path, path, train_top_blocks=3), model=tiny_model())


@pytest.mark.parametrize("kw, message", [
    (dict(train_top_blocks=3), r"train_top_blocks must lie in \[1, 2\] for this 2-block model"),
    (dict(batch_size=16), "8 examples cannot fill one batch of 16; lower batch_size or add data"),
])
def test_sizes_that_cannot_work_are_refused_before_the_weights_load(tmp_path, monkeypatch, kw, message):
    import ivg_jax.training.trainer as trainer

    def load(*a, **k):
        raise AssertionError("the weights were loaded before the sizes were checked")

    monkeypatch.setattr(trainer, "prepare_model", load)
    path = write_jsonl(tmp_path / "p.jsonl", preference_records(8))
    with pytest.raises(InputError, match=message):
        train(_cfg(tmp_path, path, **kw), model=tiny_model())
