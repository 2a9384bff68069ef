"""Ready settings for the paper's three tasks, for users with the checkpoints and accelerators.

A recipe names the models (hub ids, or paths you pass instead), each model's prompt template, where guidance
acts (token / chunk level), the search shape and the sampling settings of spec §4, and the output format.
`run_recipe` reads prompts from JSONL, decodes them in batches with the IVG engine and writes the outputs
(AlpacaEval's `model_outputs.json` format for the instruction-following recipes).

Guides whose tokenizer differs from the base's (Tulu-2 is Llama-2-based, Mistral has its own tokenizer) can
only act at chunk level — the engine re-tokenises each chunk for them — so the AlpacaEval recipes run
weak-to-strong search with the Tulu-2 DPO/SFT pair (the setting of spec §7's numbers); token-level guidance
needs guides of the base's vocabulary and is refused otherwise with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path

from ivg_jax import jsonl
from ivg_jax.decoding.settings import DecodeSettings
from ivg_jax.errors import InputError, require_dtype


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe(DecodeSettings):
    """A task's decode settings (IVG by default: implicit at token level, explicit picking W=4 x K=4 chunks of
    L=5) with its models, the record -> prompt template and the output format."""

    name: str
    task: str
    base: str
    tuned: str | None = None  # implicit guide: DPO-tuned model ...
    reference: str | None = None  # ... and its reference
    value: str | None = None  # explicit guide: a token-level value model
    record_template: str = "{prompt}"  # JSONL record fields -> the raw prompt x
    token: str = "implicit"
    chunk: str = "explicit"
    beams: int = 4
    candidates: int = 4
    chunk_length: int | None = 5
    output_format: str = "jsonl"  # or "alpaca_eval"
    notes: str = ""


_TULU_TEMPLATE = "<|user|>\n{prompt}\n<|assistant|>\n"
_ALPACA = dict(task="instruction following (AlpacaEval 2.0)", tuned="allenai/tulu-2-dpo-7b",
               reference="allenai/tulu-2-7b", record_template="{instruction}", guide_template=_TULU_TEMPLATE,
               token="none", chunk="implicit", beams=2, candidates=2, chunk_length=30, temperature=0.7, top_k=50,
               top_p=1.0, max_new_tokens=1024, output_format="alpaca_eval",
               notes="Tulu-2 guides re-tokenised per chunk (another tokenizer than the base); submit the output "
                     "file to alpaca_eval (GPT-4 judge).")

RECIPES = {
    "imdb_gpt2": Recipe(
        name="imdb_gpt2", task="controlled sentiment (IMDB)", base="openai-community/gpt2-large",
        tuned="runs/gpt2-imdb-dpo/export", reference="openai-community/gpt2", value="runs/gpt2-imdb-value/export",
        base_template="Here is a movie review from imdb: {prompt}", max_new_tokens=50,
        notes="guides: GPT-2 (124M) trained with train/dpo.py and train/fudge.py on IMDB samples; gold reward: "
              "a sentiment classifier's positive-minus-negative logit."),
    "tldr_gpt2": Recipe(
        name="tldr_gpt2", task="summarization (TL;DR)", base="openai-community/gpt2-xl",
        tuned="runs/gpt2-tldr-dpo/export", reference="openai-community/gpt2", value="runs/gpt2-tldr-value/export",
        record_template="SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:", max_new_tokens=128,
        implicit_weight=0.25, stop="\n",
        notes="guides: GPT-2 DPO / value models trained on the TL;DR comparisons; the judge is a reward model."),
    "alpaca_eval_mistral": Recipe(name="alpaca_eval_mistral", base="mistralai/Mistral-7B-Instruct-v0.2",
                                  base_template="[INST] {prompt} [/INST]", **_ALPACA),
    "alpaca_eval_mixtral": Recipe(name="alpaca_eval_mixtral", base="mistralai/Mixtral-8x7B-Instruct-v0.1",
                                  base_template="[INST] {prompt} [/INST]", **_ALPACA),
}


def read_prompts(path: str | Path, recipe: Recipe, limit: int | None = None) -> tuple[list[dict], list[str]]:
    """JSONL records -> (records, raw prompts x); a record missing a field of the recipe's template is named."""
    records, prompts = [], []
    for lineno, record in jsonl.records(path, "prompt file"):
        try:
            prompts.append(recipe.record_template.format(**record))
        except KeyError as e:
            raise InputError(f"{path}:{lineno}: missing field {e.args[0]!r} (recipe {recipe.name} formats "
                             f"{recipe.record_template!r})") from None
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise InputError(f"{path} holds no prompts")
    return records, prompts


def build(recipe: Recipe, models: dict):
    """-> Guidance with the loaded `models` {"tuned", "reference", "value"} (None if unused)."""
    return recipe.guidance(tuned=lambda: models["tuned"], reference=lambda: models["reference"],
                           value=lambda: models["value"])


def run_recipe(recipe: Recipe, prompts_path: str | Path, output_path: str | Path, model_paths: dict | None = None,
               limit: int | None = None, batch_size: int = 4, seed: int = 0, dtype: str = "float32",
               progress: bool = True, **overrides) -> Path:
    """Decodes every prompt of the file with the recipe and writes the outputs.

    `model_paths` replaces the recipe's model ids ({"base", "tuned", "reference", "value"}); `overrides` replaces
    recipe fields (e.g. max_new_tokens). Output: JSONL `{..record, "output"}` or AlpacaEval's JSON list of
    `{"instruction", "output", "generator"}`.
    """
    import ivg_jax

    recipe = dataclasses.replace(recipe, **overrides)
    if limit is not None and limit < 1:
        raise InputError(f"limit must be >= 1 (or unset: every prompt); got {limit}")
    if batch_size < 1 or recipe.max_new_tokens < 1:
        raise InputError(f"batch_size and max_new_tokens must be >= 1; got {batch_size}, {recipe.max_new_tokens}")
    require_dtype(dtype)
    records, prompts = read_prompts(prompts_path, recipe, limit)
    sources = {k: (model_paths or {}).get(k) or getattr(recipe, k) for k in ("base", "tuned", "reference", "value")}
    needed = {"base", *recipe.roles}
    missing = [k for k in sorted(needed) if not sources[k]]
    if missing:
        raise InputError(f"recipe {recipe.name} needs models for {missing}; pass their paths")
    output_path = Path(output_path)
    with _output_slot(output_path) as tmp:
        # Prompts, templates, vocabularies and context lengths against tokenizers and configs before any weights.
        from ivg_jax.loading import inspect_model

        shells = {k: inspect_model(sources[k]) for k in needed}
        recipe.preflight(shells["base"], prompts, build(recipe, shells))
        models = {k: ivg_jax.load_model(sources[k], dtype=dtype, progress=progress, per_layer=recipe.unroll_layers)
                  for k in needed}
        outputs = _decode(recipe, models["base"], prompts, build(recipe, models), batch_size, seed, progress)
        generator = f"{recipe.name}:{os.path.basename(str(sources['base']).rstrip('/'))}+ivg"
        if recipe.output_format == "alpaca_eval":
            text = json.dumps([{"instruction": p, "output": o, "generator": generator}
                               for p, o in zip(prompts, outputs)], indent=2)
        else:
            text = "".join(json.dumps(r | {"output": o}) + "\n" for r, o in zip(records, outputs))
        tmp.write(text)
    os.replace(tmp.name, output_path)
    return output_path


@contextlib.contextmanager
def _output_slot(path: Path):
    """The temporary file the output is written to, created before any model loads so that an unwritable
    location is refused in seconds, not after all the decoding; removed if the run fails."""
    if path.is_dir():
        raise InputError(f"output {path} is a directory; pass a file path (e.g. {path / 'outputs.json'})")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name per run: two runs on one output each write their own file and the last rename wins whole.
    tmp = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with tmp:
            yield tmp
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise


def _decode(recipe: Recipe, base, prompts: list[str], guidance, batch_size: int, seed: int,
            progress: bool) -> list[str]:
    from ivg_jax.progress import tqdm

    outputs = []
    for start in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc=recipe.name):
        chunk = prompts[start:start + batch_size]
        out = recipe.decode(base, chunk, guidance, [seed + start + i for i in range(len(chunk))])
        outputs += [t.strip() for t in out.texts]
    return outputs
