"""One decode-settings object behind the three front ends: the dataset job, the recipes and the sentiment
experiment's methods build their search, sampling and guidance from it and refuse the same bad values with the
same line; the dataset job's settings hash (the key under which finished prompts are kept) is unchanged by the
refactor that introduced it."""

import dataclasses

import pytest

from ivg_jax.decoding.jobs import DecodeJobConfig
from ivg_jax.decoding.settings import DecodeSettings
from ivg_jax.errors import InputError
from ivg_jax.experiments.recipes import RECIPES, Recipe
from ivg_jax.experiments.sentiment.pipeline import METHODS, PRESETS, SentimentConfig
from ivg_jax.guidance import Search

BAD = [
    (dict(token="sometimes"), "token and chunk must be one of"),
    (dict(beams=0), "beams must be >= 1"),
    (dict(chunk_length=0), "chunk_length must be >= 1"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=1.5), "top_p"),
    (dict(base_template="no field"), "base_template"),
    (dict(guide_template="{prompt} {other}"), "guide_template"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[next(iter(b)) for b, _ in BAD])
def test_every_front_end_refuses_the_same_values_with_the_same_line(bad, message):
    with pytest.raises(InputError, match=message) as plain:
        DecodeSettings(**bad)
    with pytest.raises(InputError) as job:
        DecodeJobConfig(input="in.jsonl", output="out.jsonl", **bad)
    with pytest.raises(InputError, match=message):  # its line names its own (other) defaults
        dataclasses.replace(RECIPES["imdb_gpt2"], **bad)
    assert str(plain.value) == str(job.value)


def test_the_sentiment_config_refuses_through_the_same_checks():
    with pytest.raises(InputError, match="guide_template") as e:
        SentimentConfig(run_dir="r", guide_template="{x}")
    with pytest.raises(InputError) as plain:
        DecodeSettings(guide_template="{x}")
    assert str(e.value) == str(plain.value)


def test_job_settings_hash_is_the_one_earlier_versions_wrote():
    # Computed with the code before DecodeSettings existed: outputs written then still resume.
    assert DecodeJobConfig(input="a", output="b").config_hash() == "670bd9d13bbc"
    assert DecodeJobConfig(input="a", output="b", token="implicit", tuned="t", reference="r", beams=4, candidates=2,
                           chunk_length=3, stop="x").config_hash() == "ff916a6a88e7"
    # int8 weights change results, so a job resumed with them starts over
    assert DecodeJobConfig(input="a", output="b", quantize="int8").config_hash() != "670bd9d13bbc"
    # so does another matmul library (float rounding can change a sampled token)
    assert DecodeJobConfig(input="a", output="b", cpu_matmuls="eigen").config_hash() != "670bd9d13bbc"


def test_search_sampling_and_stops_come_from_the_settings():
    s = DecodeSettings(beams=4, candidates=2, chunk_length=5, temperature=0.5, top_k=10, stop="\n")
    assert s.search == Search(4, 2, 5)
    assert (s.sampling.temperature, s.sampling.top_k, s.sampling.top_p) == (0.5, 10, None)
    assert s.stop_strings == ["\n"] and DecodeSettings().stop_strings == []


def test_roles_name_the_guides_a_mode_loads():
    assert DecodeSettings().roles == ()
    assert DecodeSettings(token="implicit").roles == ("tuned", "reference")
    assert DecodeSettings(chunk="explicit").roles == ("value",)
    assert DecodeSettings(token="implicit", chunk="explicit").roles == ("tuned", "reference", "value")
    loaded = []
    g = DecodeSettings(chunk="explicit", implicit_weight=3.0).guidance(
        tuned=lambda: loaded.append("tuned"), reference=lambda: loaded.append("reference"),
        value=lambda: loaded.append("value") or "V")
    assert loaded == ["value"] and g.explicit.value == "V" and not g.implicit


def test_recipes_are_decode_settings_with_the_spec_search():
    r = RECIPES["imdb_gpt2"]
    assert isinstance(r, DecodeSettings) and (r.token, r.chunk, r.search) == ("implicit", "explicit", Search(4, 4, 5))
    assert RECIPES["tldr_gpt2"].stop_strings == ["\n"]
    with pytest.raises(TypeError):
        Recipe("positional", "task", "base")  # keyword-only: a recipe names every field it sets


def test_each_sentiment_method_gets_its_search_shape():
    cfg = SentimentConfig(run_dir="r", **PRESETS["fast"])
    W, K, L = cfg.beams, cfg.candidates, cfg.chunk_length
    expected = {
        "base": ("none", "none", Search(1, 1)), "bon": ("none", "explicit", Search(1, cfg.bon_n)),
        "eft": ("implicit", "none", Search(1, 1)), "cbs_implicit": ("none", "implicit", Search(W, K, L)),
        "cbs_explicit": ("none", "explicit", Search(W, K, L)), "ivg": ("implicit", "explicit", Search(W, K, L)),
        "ivg_reversed": ("explicit", "implicit", Search(W, K, L)),
        # Baselines at IVG's compute: IVG runs four models over W*K rows, these two over 2*W*K.
        "bon_matched": ("none", "explicit", Search(1, 2 * W * K)),
        "cbs_explicit_matched": ("none", "explicit", Search(W, 2 * K, L)),
        # Weak-to-strong's yardstick: the guide model's own best-of-N (decoded from the guide, not the base).
        "bon_guide": ("none", "explicit", Search(1, cfg.bon_n)),
    }
    assert set(expected) == set(METHODS)
    for method, (token, chunk, search) in expected.items():
        s = cfg.decode_settings(method)
        assert (s.token, s.chunk, s.search) == (token, chunk, search), method
        assert (s.temperature, s.max_new_tokens, s.stop) == (cfg.temperature, cfg.max_new_tokens, cfg.stop_string)
        assert (s.base_template, s.guide_template) == (cfg.base_template, cfg.guide_template)
    sample = cfg.sample_settings
    assert (sample.token, sample.chunk, sample.search) == ("none", "none", Search(1, 1))
    assert (sample.temperature, sample.base_template) == (cfg.sample_temperature, cfg.guide_template)


def test_matched_baselines_name_ivg_only_where_ivg_runs():
    with_ivg = SentimentConfig(run_dir="r", **{**PRESETS["fast"], "methods": "ivg,bon_matched"})
    without = SentimentConfig(run_dir="r", **{**PRESETS["fast"], "methods": "cbs_explicit,bon_matched"})
    n = 2 * with_ivg.beams * with_ivg.candidates
    assert with_ivg.label("bon_matched") == f"best-of-{n} (explicit value, IVG's compute)"
    assert without.label("bon_matched") == f"best-of-{n} (explicit value, matched compute)"
