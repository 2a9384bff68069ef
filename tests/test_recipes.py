"""The paper's three task recipes load and run end to end on tiny random stand-ins of the same architectures
(GPT-2 for IMDB and TL;DR; Mistral and Mixtral bases with Llama "Tulu-2" guides of another tokenizer for
AlpacaEval), writing their output formats; a recipe's settings are the spec's (checked against a direct call)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from oracle import VOCAB, make_hf_model, word_tokenizer

import ivg_jax
from ivg_jax.experiments.recipes import RECIPES, Recipe, run_recipe
from ivg_jax.loading import export_hf
from ivg_jax.model.api import attach_head

WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 3)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _standin(root, family, name, seed, tokenizer):
    d = root / name
    make_hf_model(family, d, seed=seed)
    tokenizer.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    same = word_tokenizer(WORDS, eos_only=True)
    other = word_tokenizer(WORDS[:3] + WORDS[3:][::-1], eos_only=True)  # a different vocabulary, same size
    m = {"gpt2_base": _standin(root, "gpt2", "gpt2-large", 0, same),
         "gpt2_tuned": _standin(root, "gpt2", "gpt2-dpo", 1, same),
         "gpt2_ref": _standin(root, "gpt2", "gpt2", 2, same),
         "mistral": _standin(root, "mistral-window", "mistral", 3, same),
         "mixtral": _standin(root, "mixtral-4experts", "mixtral", 4, same),
         "tulu_dpo": _standin(root, "llama-gqa-tied", "tulu-dpo", 5, other),
         "tulu_sft": _standin(root, "llama-gqa-tied", "tulu-sft", 6, other)}
    value = attach_head(ivg_jax.load_model(m["gpt2_ref"]), "value", scale=0.5, seed=7)
    export_hf(value, root / "gpt2-value")
    m["gpt2_value"] = str(root / "gpt2-value")
    rng = np.random.default_rng(0)
    words = lambda n: " ".join(rng.choice(WORDS[3:], n))  # noqa: E731
    files = {"imdb": [{"prompt": words(3)} for _ in range(3)],
             "tldr": [{"subreddit": words(1), "title": words(2), "post": words(6)} for _ in range(2)],
             "alpaca": [{"instruction": words(4), "dataset": "helpful_base"} for _ in range(3)]}
    for name, rows in files.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, m


def test_imdb_recipe_is_the_spec_setting(standins):
    root, m = standins
    recipe = RECIPES["imdb_gpt2"]
    paths = {"base": m["gpt2_base"], "tuned": m["gpt2_tuned"], "reference": m["gpt2_ref"], "value": m["gpt2_value"]}
    out = run_recipe(recipe, root / "imdb.jsonl", root / "imdb_out.jsonl", paths, max_new_tokens=8, progress=False,
                     batch_size=3)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all("prompt" in r and isinstance(r["output"], str) for r in rows)
    # The same decode spelled out from spec §4 (IVG: implicit token w=1 + explicit chunk, W,K,L=4,4,5, T=0.7).
    base, tuned, ref, value = (ivg_jax.load_model(paths[k]) for k in ("base", "tuned", "reference", "value"))
    guidance = ivg_jax.Guidance(implicit=[ivg_jax.ImplicitGuide(tuned, ref, 1.0)],
                                explicit=ivg_jax.ExplicitGuide(value, 1.0), token="implicit", chunk="explicit",
                                base_template="Here is a movie review from imdb: {prompt}")
    direct = ivg_jax.generate(base, [r["prompt"] for r in rows], guidance, ivg_jax.Search(4, 4, 5),
                              ivg_jax.Sampling(0.7), max_new_tokens=8, seed=[0, 1, 2])
    assert [r["output"] for r in rows] == [t.strip() for t in direct.texts]


def test_tldr_recipe_formats_posts(standins):
    root, m = standins
    paths = {"base": m["gpt2_base"], "tuned": m["gpt2_tuned"], "reference": m["gpt2_ref"], "value": m["gpt2_value"]}
    out = run_recipe(RECIPES["tldr_gpt2"], root / "tldr.jsonl", root / "tldr_out.jsonl", paths, max_new_tokens=6,
                     progress=False)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2 and all({"post", "title", "output"} <= set(r) for r in rows)


@pytest.mark.parametrize("name, base", [("alpaca_eval_mistral", "mistral"), ("alpaca_eval_mixtral", "mixtral")])
def test_alpaca_eval_recipes_write_the_submission_format(standins, name, base):
    root, m = standins
    paths = {"base": m[base], "tuned": m["tulu_dpo"], "reference": m["tulu_sft"]}
    out = run_recipe(RECIPES[name], root / "alpaca.jsonl", root / f"{name}.json", paths, max_new_tokens=8,
                     chunk_length=4, progress=False)
    entries = json.loads(out.read_text())
    assert [e["instruction"] for e in entries] == [json.loads(x)["instruction"]
                                                   for x in (root / "alpaca.jsonl").read_text().splitlines()]
    assert all(set(e) == {"instruction", "output", "generator"} and name in e["generator"] for e in entries)


def test_token_level_guides_of_another_vocabulary_are_refused(standins):
    root, m = standins
    recipe = Recipe(**{**RECIPES["alpaca_eval_mistral"].__dict__, "token": "implicit"})
    with pytest.raises(ivg_jax.IvgError, match="vocabular|tokenizer"):
        run_recipe(recipe, root / "alpaca.jsonl", root / "x.json",
                   {"base": m["mistral"], "tuned": m["tulu_dpo"], "reference": m["tulu_sft"]}, max_new_tokens=4,
                   progress=False)


def test_recipe_command_names_a_missing_field(standins):
    root, m = standins
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "decode", "recipe.py"), "tldr_gpt2", "--prompts",
                           str(root / "imdb.jsonl"), "--output", str(root / "x.jsonl"), "--base", m["gpt2_base"]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("imdb.jsonl:1: missing field 'subreddit' (recipe tldr_gpt2 "
                                                         "formats 'SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: "
                                                         "{post}\\nTL;DR:')")
