"""The paper's controlled-sentiment experiment, offline: SmolLM2 continues movie-review openings, VADER judges.

Stages (each resumable; all outputs under one run directory; `stages/<name>.json` marks a finished stage):

    sample    two continuations per train / validation prompt from the untuned guide model (the base unless
              `guide_model` is set; guide template), scored
    label     Bradley–Terry preference pairs drawn from the gold reward (p(y1 ≻ y2) = σ(r1 − r2)); scored responses
    dpo       DPO-train the implicit guide (tuned vs the untuned model as reference)
    fudge     train the explicit token-value model on the scored responses
    decode    the test prompts with every method (base, best-of-N, EFT, CBS-implicit, CBS-explicit, IVG, reversed IVG)
    evaluate  gold reward with 95% bootstrap intervals, base-model NLL, KL, distinct-2/3, compute; table + plots

Long stages write parts (one per batch of prompts) with atomic renames and skip the parts that exist, so an
interrupted run loses at most one batch; the training stages resume from their Orbax checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ivg_jax.decoding.settings import DecodeSettings
from ivg_jax.errors import InputError, require_dtype, require_positive
from ivg_jax.jsonl import read_text

STAGES = ("sample", "label", "dpo", "fudge", "decode", "evaluate")
# The grid (run by default) and two baselines given IVG's compute: IVG runs four models (base, tuned,
# reference, value) over W*K rows; best-of-N and CBS explicit run two (base, value), so with guides as large as
# the base they get 2*W*K samples and W x 2K candidates (smaller guides: fewer, by the models' FLOPs per token).
# bon_guide is the weak-to-strong yardstick: the guide model's own best-of-N, no base involved.
DEFAULT_METHODS = ("base", "bon", "eft", "cbs_implicit", "cbs_explicit", "ivg", "ivg_reversed")
METHODS = DEFAULT_METHODS + ("bon_matched", "cbs_explicit_matched", "bon_guide")
METHOD_LABELS = {
    "base": "base (plain sampling)", "bon": "best-of-{n} (explicit value)", "eft": "EFT (implicit, token level)",
    "cbs_implicit": "CBS implicit", "cbs_explicit": "CBS explicit", "ivg": "IVG (implicit token + explicit chunk)",
    "ivg_reversed": "reversed IVG (explicit token + implicit chunk)",
    "bon_matched": "best-of-{n_matched} (explicit value, {matched})",
    "cbs_explicit_matched": "CBS explicit, K = {k_matched} ({matched})",
    "bon_guide": "best-of-{n} from the guide model alone",
}
PROMPTS_DIR = Path(__file__).parent / "prompts"
# How the DPO training pairs are made from each train prompt's samples. Validation pairs are always "bt", the
# paper's yardstick. benchmarks/dpo_recipes.py measures what each gives the guide.
PAIR_SCHEMES = {
    "bt": "disjoint pairs (1st-2nd, 3rd-4th, ...) labelled by a Bradley-Terry draw p(y1 > y2) = sigmoid(r1 - r2)",
    "maxgap": "one pair per prompt: its highest- against its lowest-reward sample (ties dropped)",
    "allpairs": "every pair of a prompt's samples with different rewards, the higher one chosen",
}


@dataclasses.dataclass(frozen=True)
class SentimentConfig:
    """Every setting of one run. Defaults are the full run (the README's "full run": the recipe that made both guides
    learn at scale, issue 12); `PRESETS["fast"]` is the README's main job."""

    run_dir: str
    model: str = ""  # the base; "" = the embedded SmolLM2
    guide_model: str = ""  # the guides' starting point and reference, and the sampler of their data; "" = the base
    prompts_dir: str = ""  # train.txt / val.txt / test.txt; "" = the shipped openings
    n_train: int = 2000  # guides learn from data: 400 prompts left the DPO guide at chance, 2000 did not
    n_val: int = 100
    n_test: int = 200
    samples_per_prompt: int = 4  # the paper's protocol is 2; more gives disjoint pairs 1st-2nd, 3rd-4th, ...
    dpo_pairs: str = "maxgap"  # training pairs: "bt" (the paper's), "maxgap" or "allpairs" (see PAIR_SCHEMES)
    sample_temperature: float = 1.0
    max_new_tokens: int = 24
    temperature: float = 0.7
    base_template: str = "Here is a movie review from imdb: {prompt}"
    guide_template: str = "{prompt}"
    stop_string: str = "\n\n"
    beams: int = 4
    candidates: int = 4
    chunk_length: int = 5
    bon_n: int = 16
    implicit_weight: float = 1.0
    explicit_weight: float = 1.0
    dpo_beta: float = 0.1
    dpo_learning_rate: float = 5e-4
    dpo_epochs: float = 1.0
    dpo_select: str = "final"  # the DPO guide used: "best" validated step (the untouched model included) or "final"
    fudge_learning_rate: float = 1e-3
    fudge_epochs: float = 1.0
    train_batch_size: int = 16
    train_top_blocks: int | None = 2
    sample_batch: int = 32
    decode_batch: int = 16  # 256 rows for W K = 16 (4.4 GB of caches at 512 rows for best-of-32)
    methods: str = ",".join(m for m in METHODS if m != "bon_guide")  # bon_guide needs guide_model
    dtype: str = "float32"
    decode_dtype: str = ""  # the decode stage's weights; "" = dtype (bfloat16 on CPU: with unroll_layers)
    unroll_layers: bool = False  # decode on per-layer weights (on CPU, bf16 matmuls stay bf16 with no fp32 copy)
    seed: int = 0

    def __post_init__(self):
        unknown = [m for m in self.method_list if m not in METHODS]
        if unknown:
            raise InputError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
        require_positive(self, ("n_train", "n_val", "n_test", "samples_per_prompt", "max_new_tokens", "beams",
                                "candidates", "chunk_length", "bon_n", "train_batch_size", "sample_batch",
                                "decode_batch"))
        require_dtype(self.dtype)
        if self.decode_dtype:
            require_dtype(self.decode_dtype, "decode_dtype")
        for method in self.method_list:
            # templates, stop string and sampling, checked once, where decoding does (the matched sizes, which
            # need the models' configs, are checked by the preflight)
            self.decode_settings(method, matched_scale=2.0)
        from ivg_jax.training.trainer import SELECT

        if self.dpo_select not in SELECT:  # checked here too: the trainer's check comes after the sampling
            raise InputError(f"dpo_select must be one of {', '.join(SELECT)}; got {self.dpo_select!r}")
        if self.dpo_pairs not in PAIR_SCHEMES:
            raise InputError(f"dpo_pairs must be one of {', '.join(PAIR_SCHEMES)}; got {self.dpo_pairs!r}")
        if self.samples_per_prompt < 2:
            raise InputError("samples_per_prompt must be >= 2: preference pairs need two responses per prompt")
        if "bon_guide" in self.method_list and not self.guide_model:
            raise InputError("method bon_guide samples from the guide model: set guide_model (a model smaller "
                             "than the base), or drop the method")

    def stage_weights(self, stage: str) -> tuple[str, bool]:
        """(dtype, per_layer) of one stage's models: training, its data and the evaluation's NLL in `dtype`,
        decoding in `decode_dtype` (so a bfloat16 decode is scored on the same scale as a float32 one), on
        per-layer weights when it unrolls the layers (no per-call copy of the blocks)."""
        if stage == "decode":
            return self.decode_dtype or self.dtype, self.unroll_layers
        return self.dtype, False

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

    @property
    def matched_scale(self) -> float:
        """IVG's compute per row-token over CBS explicit's (base + tuned + reference + value against base + value):
        2 when the guides are copies of the base's architecture, less for smaller guides (weak-to-strong)."""
        if not self.guide_model:
            return 2.0
        cost = member_costs(self.model, self.guide_model)
        return (cost["base"] + 2 * cost["guide"] + cost["value"]) / (cost["base"] + cost["value"])

    @property
    def matched_candidates(self) -> int:
        """K of CBS explicit at IVG's compute (2K when the guides are the base's size)."""
        return self._matched_sizes(self.matched_scale)[1]

    @property
    def matched_bon_n(self) -> int:
        """N of best-of-N at IVG's compute (2 W K when the guides are the base's size)."""
        return self._matched_sizes(self.matched_scale)[0]

    def _matched_sizes(self, scale: float) -> tuple[int, int]:
        """(N of best-of-N, K of CBS explicit) spending `scale` times their own per-row compute."""
        return max(1, round(self.beams * self.candidates * scale)), max(1, round(self.candidates * scale))

    @property
    def sample_settings(self) -> DecodeSettings:
        """The data collection's: the base sampled plainly, prompted as the guides are (so the pairs and values
        they learn from are in their own prompt format)."""
        return DecodeSettings(temperature=self.sample_temperature, max_new_tokens=self.max_new_tokens,
                              base_template=self.guide_template, stop=self.stop_string)

    def decode_settings(self, method: str, matched_scale: float | None = None) -> DecodeSettings:
        """The test-set decode of one method of the grid (`matched_scale`: see that property; default: its
        value)."""
        beam = (self.beams, self.candidates, self.chunk_length)
        if matched_scale is None:  # only the matched methods need the models' configs
            matched_scale = self.matched_scale if method.endswith("_matched") else 2.0
        matched_n, matched_k = self._matched_sizes(matched_scale)
        token, chunk, (beams, candidates, chunk_length) = {
            "base": ("none", "none", (1, 1, None)),
            "bon": ("none", "explicit", (1, self.bon_n, None)),  # best-of-N: one chunk of the whole budget
            "eft": ("implicit", "none", (1, 1, None)),
            "cbs_implicit": ("none", "implicit", beam),
            "cbs_explicit": ("none", "explicit", beam),
            "ivg": ("implicit", "explicit", beam),
            "ivg_reversed": ("explicit", "implicit", beam),
            "bon_matched": ("none", "explicit", (1, matched_n, None)),
            "cbs_explicit_matched": ("none", "explicit", (self.beams, matched_k, self.chunk_length)),
            "bon_guide": ("none", "explicit", (1, self.bon_n, None)),
        }[method]
        return DecodeSettings(token=token, chunk=chunk, beams=beams, candidates=candidates,
                              chunk_length=chunk_length, temperature=self.temperature,
                              max_new_tokens=self.max_new_tokens, implicit_weight=self.implicit_weight,
                              explicit_weight=self.explicit_weight, base_template=self.base_template,
                              guide_template=self.guide_template, stop=self.stop_string,
                              unroll_layers=self.unroll_layers)

    def label(self, method: str) -> str:
        # cross-vocabulary runs have no IVG to point at; the compute column says what was matched
        matched = "IVG's compute" if "ivg" in self.method_list else "matched compute"
        return METHOD_LABELS[method].format(n=self.bon_n, n_matched=self.matched_bon_n,
                                            k_matched=self.matched_candidates, matched=matched)


@functools.lru_cache(maxsize=8)
def member_costs(model: str, guide_model: str) -> dict[str, int]:
    """FLOPs per token of each model of a run (base, guide = tuned and reference, value), from configs alone."""
    from ivg_jax.defaults import default_model_path
    from ivg_jax.loading import inspect_model

    base = inspect_model(model or str(default_model_path())).config
    guide = inspect_model(guide_model).config if guide_model else base
    return {"base": base.flops_per_token, "guide": guide.flops_per_token,
            "value": guide.replace(head="value").flops_per_token}


def generator_of(method: str) -> str:
    """The model a method samples from: "guide" for the guide model's own best-of-N, else "base"."""
    return "guide" if method == "bon_guide" else "base"


def response_ids(models: Models, method: str, rows: list[dict]) -> list[list[int]]:
    """Each decoded row's response as the base's token ids, which the base scores (NLL): the decoder's own ids,
    or, when the method sampled from a guide model of another tokenizer, its text re-tokenised by the base's
    (the response on its own, as training encodes responses; the stop string, trimmed from the text, is not
    scored). The guide's ids are not the base's tokens and, inside the base's larger vocabulary, would be
    scored as other text without an error."""
    from ivg_jax.guidance import same_vocabulary
    from ivg_jax.loading import inspect_model

    if generator_of(method) == "base" or not models.cfg.guide_model:
        return [r["tokens"] for r in rows]
    base = models.base()
    if same_vocabulary(base, inspect_model(models.guide_source)):
        return [r["tokens"] for r in rows]
    return [base.tokenizer(r["text"], add_special_tokens=False)["input_ids"] for r in rows]


def base_forward_factor(cfg: SentimentConfig, method: str) -> float:
    """Base-forward tokens per model forward token of a method: its models' mean FLOPs per token over the base's.
    Every model of a method runs the same rows, so this turns the engine's forward-token count into compute in
    units of the base's forward. 1 when the guides are the base's size."""
    if not cfg.guide_model:
        return 1.0
    cost = member_costs(cfg.model, cfg.guide_model)
    role_cost = {"tuned": cost["guide"], "reference": cost["guide"], "value": cost["value"]}
    models = [cost[generator_of(method)]] + [role_cost[r] for r in cfg.decode_settings(method).roles]
    return sum(models) / (len(models) * cost["base"])


SENTIMENT_HELP = {
    "model": "the base (default: the embedded SmolLM2-135M-Instruct)",
    "guide_model": "the guides' starting point and reference, sampled for their training data: a smaller model "
                   "makes the run weak-to-strong (default: the base itself, the paper's same-model setting)",
    "prompts_dir": "directory with train.txt, val.txt, test.txt (default: the shipped openings)",
    "n_train": "train prompts", "n_val": "validation prompts", "n_test": "test prompts",
    "samples_per_prompt": "continuations sampled per train / validation prompt (disjoint pairs: 1st-2nd, 3rd-4th, ...)",
    "dpo_pairs": "DPO training pairs from each prompt's samples: "
                 + "; ".join(f"{k}: {v}" for k, v in PAIR_SCHEMES.items()),
    "sample_temperature": "temperature of the data-collection samples",
    "max_new_tokens": "new tokens per continuation", "temperature": "decoding temperature of the methods",
    "base_template": "the base's prompt template", "guide_template": "the guides' prompt template",
    "stop_string": "a string that ends a continuation", "beams": "W of the beam-search methods",
    "candidates": "K of the beam-search methods", "chunk_length": "L of the beam-search methods",
    "bon_n": "samples of the best-of-N method", "implicit_weight": "w of the implicit guide at token level",
    "explicit_weight": "w of the value model at token level (reversed IVG)", "dpo_beta": "the beta of DPO",
    "dpo_learning_rate": "DPO AdamW learning rate", "dpo_epochs": "DPO epochs",
    "dpo_select": "the DPO guide used: best (lowest validation loss, the untouched model included) or final (the "
                  "last step; for small validation sets, where the best step is mostly chance)",
    "fudge_learning_rate": "learning rate of the value model", "fudge_epochs": "epochs of the value model",
    "train_batch_size": "training batch size (pairs / responses)",
    "train_top_blocks": "train only the top N blocks (none = full fine-tuning)",
    "sample_batch": "prompts per sampling call (one resumable part each)",
    "decode_batch": "prompts per decoding call (one resumable part each)",
    "methods": "comma-separated subset of " + ",".join(METHODS) + " (bon_matched, cbs_explicit_matched: "
               "baselines at IVG's compute; bon_guide: the guide model's own best-of-N, with guide_model set; "
               "methods can be added to a finished run)", "dtype": "weights as float32 or bfloat16",
    "decode_dtype": "weights of the decode stage (the guides are trained and the texts sampled and scored in dtype); "
                    "empty = dtype. bfloat16 halves the decoding's weights; on CPU with unroll_layers (the layer "
                    "loop adds a float32 copy of them)",
    "unroll_layers": "decode each model's blocks one after another on per-layer weights instead of a loop over "
                     "stacked ones: on CPU, bf16 matmuls stay bf16 and no float32 copy of the weights is made "
                     "(~3x the compile time; float32 results unchanged, bfloat16 ones differ at the rounding)",
    "seed": "seed of sampling, labels and training",
}

# The README's main job: under 10 minutes on 2 CPU cores, sized so that the paired intervals of the claims
# it prints (IVG above base, EFT and CBS explicit; EFT above base) clear 0. Four samples per train prompt
# give max-gap DPO pairs (the best against the worst sample: the clearest signal a few pairs can carry;
# benchmarks/dpo_recipes.py compares schemes). The two costliest methods (CBS implicit, reversed IVG) are
# left to the full preset (add them with --methods). Batches are multiples of 8, the engine's prompt bucket
# (20 prompts ran as 24), and one decode batch holds every test prompt. The DPO guide is the final step of 5
# epochs: selecting the best step on 64 noisy validation pairs was chance (a run on another CPU picked step
# 12 of 27 and EFT's gain over the base fell inside noise); 3 / 4 / 5 / 6 epochs gave EFT - base +0.44 /
# +0.82 / +1.19 / +1.90 on the same data, the NLL rising with the shift (5 epochs: +0.12 nats/token).
_FAST = dict(n_train=160, n_val=32, n_test=40, samples_per_prompt=4, dpo_pairs="maxgap", max_new_tokens=24,
             dpo_epochs=5.0, dpo_select="final", dpo_learning_rate=5e-4, fudge_epochs=1.0, fudge_learning_rate=1e-3,
             train_batch_size=16, train_top_blocks=2, sample_batch=32, decode_batch=40, beams=2, candidates=4,
             chunk_length=6, bon_n=4, methods="base,bon,eft,cbs_explicit,ivg")

PRESETS = {
    "full": {},
    # The full run before issue 12's recipe (the paper's protocol at 400 train prompts: two samples per prompt,
    # Bradley-Terry pairs, 50 tokens, top-4 blocks at lr 1e-4 for 2 epochs, best validated checkpoints): the
    # README's earlier table, and the guides benchmarks/sentiment_w_knob.py reuses.
    "full-bt400": dict(n_train=400, samples_per_prompt=2, dpo_pairs="bt", max_new_tokens=50, dpo_learning_rate=1e-4,
                       dpo_epochs=2.0, dpo_select="best", fudge_learning_rate=1e-4, fudge_epochs=2.0,
                       train_top_blocks=4, decode_batch=8, methods=",".join(DEFAULT_METHODS)),
    "fast": _FAST,
    # Weak-to-strong (issue 15): Qwen2.5-Coder-0.5B guides (trained here, on the 0.5B's own samples) steer the frozen
    # 1.5B (`ivg assets fetch` both first). The fast preset's sizes, plus the yardsticks of the setting: best-of-N
    # at IVG's compute in base-forward FLOPs, and the 0.5B's own best-of-N. The fast preset's DPO schedule (lr 5e-4,
    # 5 epochs) over-trains the 0.5B (validation loss 1.39, +1.4 nats/token under the base); lr 2e-4 for 3 epochs
    # keeps the shift at +0.75 with a larger reward gain, and the value model gets a second epoch.
    "w2s": {**_FAST, "model": "qwen2.5-coder-1.5b", "guide_model": "qwen2.5-coder-0.5b",
            "dpo_learning_rate": 2e-4, "dpo_epochs": 3.0, "fudge_epochs": 2.0,
            "methods": "base,bon,eft,cbs_explicit,ivg,bon_matched,bon_guide"},
    # The paper's flagship setting, across tokenizers (issue 15): SmolLM2-135M guides (49k-token vocabulary, trained
    # here on SmolLM2's own samples) steer the frozen Qwen2.5-Coder-1.5B (152k tokens) at chunk level: each chunk's
    # text is re-tokenised for the guides on the host (`ivg_jax.decoding.retokenize`). Token-level guidance needs
    # the base's vocabulary, so EFT and IVG are not in the grid; best-of-N is matched to CBS with both guides.
    "w2s-xvocab": {**_FAST, "model": "qwen2.5-coder-1.5b", "guide_model": "smollm2",
                   "methods": "base,bon,cbs_implicit,cbs_explicit,bon_guide,bon_matched"},
    # CI's check that command 1 runs in a fresh install: every stage and method on the real model, tiny sizes
    # (its numbers mean nothing).
    "smoke": dict(n_train=8, n_val=4, n_test=4, max_new_tokens=8, dpo_epochs=1.0, fudge_epochs=1.0,
                  train_batch_size=4, train_top_blocks=1, sample_batch=8, decode_batch=4, beams=2, candidates=2,
                  chunk_length=4, bon_n=4, methods=",".join(DEFAULT_METHODS),
                  samples_per_prompt=2, dpo_pairs="bt"),  # the paper's pairs: one per prompt, so batches fill
}


# ---------------------------------------------------------------------------------------------- run directory

def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    _atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def stage_done(cfg: SentimentConfig, stage: str) -> bool:
    return (cfg.path / "stages" / f"{stage}.json").exists()


def _mark_done(cfg: SentimentConfig, stage: str, summary: dict) -> None:
    _atomic_write(cfg.path / "stages" / f"{stage}.json", json.dumps(summary, indent=2))


@contextlib.contextmanager
def _stopwatch(cfg: SentimentConfig, key: str):
    """Adds the wall time spent inside to `clock.json[key]`, also when the block is interrupted (Ctrl-C,
    SIGTERM via the trainer, an error), so a run resumed over several sittings reports its whole cost.
    Yields the entry, filled in on exit: {"seconds": total so far, "sittings": how many}."""
    t0 = time.perf_counter()
    entry: dict = {}
    try:
        yield entry
    finally:
        clock = read_clock(cfg)
        old = clock.get(key, {"seconds": 0.0, "sittings": 0})
        entry.update(seconds=old["seconds"] + time.perf_counter() - t0, sittings=old["sittings"] + 1)
        clock[key] = dict(entry)
        _atomic_write(cfg.path / "clock.json", json.dumps(clock, indent=2))


def read_clock(cfg: SentimentConfig) -> dict:
    """{key: {"seconds", "sittings"}} of `clock.json` ({} before the first stage ends)."""
    path = cfg.path / "clock.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _check_config(cfg: SentimentConfig) -> None:
    """A run directory belongs to one configuration: resuming with other settings would mix results. The method
    list is not part of it: each method's outputs depend only on the other settings, so methods can be added."""
    path = cfg.path / "config.json"
    mine = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("run_dir", "methods")}
    if path.exists() and _holds_results(cfg):
        # A setting added after the run was made reads as its default (the behaviour the run had).
        previous = {f.name: f.default for f in dataclasses.fields(SentimentConfig)} | json.loads(path.read_text())
        changed = {k: (previous.get(k), v) for k, v in mine.items() if previous.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise InputError(f"{cfg.path} holds a run with other settings ({detail}); use another --run-dir")
    else:
        _atomic_write(path, json.dumps(mine, indent=2))


def _holds_results(cfg: SentimentConfig) -> bool:
    """Whether any stage has written outputs. A run that failed before that (say a bad model path) owns nothing:
    the corrected rerun may change its settings."""
    return any((cfg.path / d).exists() for d in ("samples", "data", "dpo", "fudge", "decode", "stages"))


def load_prompts(cfg: SentimentConfig, split: str) -> list[str]:
    directory = Path(cfg.prompts_dir) if cfg.prompts_dir else PROMPTS_DIR
    path = directory / f"{split}.txt"
    if not path.exists():
        raise InputError(f"prompt file {path} is missing (need train.txt, val.txt, test.txt)")
    prompts = [x.strip() for x in read_text(path, "prompt file").splitlines() if x.strip()]
    n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]
    if len(prompts) < n:
        raise InputError(f"{path} has {len(prompts)} prompts but the run asks for {n} ({split}); lower n_{split}")
    return prompts[:n]


# -------------------------------------------------------------------------------------------------- models

class Models:
    """Loads each model once, on first use, with one stage's weights (`cfg.stage_weights`; training's unless
    given)."""

    def __init__(self, cfg: SentimentConfig, weights: tuple[str, bool] | None = None):
        self.cfg, self._cache = cfg, {}
        self.weights = weights or cfg.stage_weights("dpo")

    def _load(self, key: str, source):
        if key not in self._cache:
            import ivg_jax

            dtype, per_layer = self.weights
            self._cache[key] = ivg_jax.load_model(source, dtype=dtype, per_layer=per_layer)
        return self._cache[key]

    @property
    def base_source(self):
        if self.cfg.model:
            return self.cfg.model
        from ivg_jax.defaults import default_model_path

        return str(default_model_path())

    @property
    def guide_source(self):
        return self.cfg.guide_model or self.base_source

    def base(self):
        return self._load("base", self.base_source)

    def guide(self):
        """The guides' starting point and reference (the base itself unless `guide_model` is set)."""
        if not self.cfg.guide_model:
            return self.base()
        return self._load("guide", self.guide_source)

    def tuned(self):
        return self._load("tuned", str(self.cfg.path / "dpo" / "export"))

    def value(self):
        return self._load("value", str(self.cfg.path / "fudge" / "export"))


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    from ivg_jax.progress import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, unit="prompt", dynamic_ncols=True)


def _in_parts(parts_dir: Path, items: Sequence, batch: int, desc: str, progress: bool,
              work: Callable[[int, Sequence], list[dict]]) -> list[dict]:
    """Runs `work(first_index, chunk)` per batch, each result saved as its own part; existing parts are reused."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(items), batch))
    done = {s for s in starts if (parts_dir / f"part-{s:06d}.jsonl").exists()}
    bar = _progress(len(items), desc, progress, sum(min(batch, len(items) - s) for s in done))
    rows = []
    for s in starts:
        part = parts_dir / f"part-{s:06d}.jsonl"
        if s not in done:
            _write_jsonl(part, work(s, items[s:s + batch]))
            bar.update(min(batch, len(items) - s))
        rows += read_jsonl(part)
    bar.close()
    return rows


# -------------------------------------------------------------------------------------------------- stages

def stage_sample(cfg: SentimentConfig, models: Models, progress: bool = True) -> dict:
    from ivg_jax.evaluation.sentiment import VaderReward

    gold = VaderReward()
    base = models.guide()  # the guides learn from their own samples
    n = cfg.samples_per_prompt
    settings = cfg.sample_settings
    guidance = settings.guidance()
    summary = {}
    for split in ("train", "val"):
        prompts = load_prompts(cfg, split)

        def work(first: int, chunk: Sequence[str], split=split) -> list[dict]:
            rows = [p for p in chunk for _ in range(n)]
            seeds = [_hash_seed(cfg.seed, split, first + i // n, i % n) % 2**31 for i in range(len(rows))]
            out = settings.decode(base, rows, guidance, seeds)
            rewards = gold([p + t for p, t in zip(rows, out.texts)])
            ended = (out.lengths < cfg.max_new_tokens).tolist()
            return [{"prompt": p, "responses": out.texts[i * n:(i + 1) * n],
                     "rewards": rewards[i * n:(i + 1) * n].tolist(), "ended": ended[i * n:(i + 1) * n]}
                    for i, p in enumerate(chunk)]

        rows = _in_parts(cfg.path / "samples" / f"{split}.parts", prompts, cfg.sample_batch, f"sample {split}",
                         progress, work)
        _write_jsonl(cfg.path / "samples" / f"{split}.jsonl", rows)
        rewards = np.asarray([r for row in rows for r in row["rewards"]])
        summary[split] = {"prompts": len(rows), "responses": int(rewards.size), "mean_reward": float(rewards.mean())}
    return summary


def _hash_seed(*parts) -> int:
    import zlib

    return zlib.crc32(json.dumps(parts).encode())


def stage_label(cfg: SentimentConfig, models: Models, progress: bool = True) -> dict:
    """Preference pairs from the gold reward (train: `cfg.dpo_pairs`; validation: Bradley-Terry) and the scored
    responses; responses that are empty after trimming are dropped."""
    summary = {}
    for split in ("train", "val"):
        rng = np.random.default_rng(_hash_seed(cfg.seed, "label", split))
        scheme = cfg.dpo_pairs if split == "train" else "bt"
        pairs, scored, agree, dropped = [], [], 0, 0
        for row in read_jsonl(cfg.path / "samples" / f"{split}.jsonl"):
            kept = [(t, r, e) for t, r, e in zip(row["responses"], row["rewards"], row["ended"]) if t.strip()]
            dropped += len(row["responses"]) - len(kept)
            scored += [{"prompt": row["prompt"], "response": t, "reward": r, "eos": e} for t, r, e in kept]
            for chosen, rejected in _pairs_of(kept, scheme, rng):
                agree += chosen[1] >= rejected[1]
                # A pair shares one "eos" flag in the schema; keep EOS only when both responses ended naturally.
                pairs.append({"prompt": row["prompt"], "chosen": chosen[0], "rejected": rejected[0],
                              "eos": bool(chosen[2] and rejected[2])})
        if not pairs:
            raise InputError(f"no {split} prompt has two non-empty responses; sample more or longer continuations")
        _write_jsonl(cfg.path / "data" / f"pairs_{split}.jsonl", pairs)
        _write_jsonl(cfg.path / "data" / f"scored_{split}.jsonl", scored)
        summary[split] = {"pairs": len(pairs), "scheme": scheme, "scored": len(scored), "dropped_empty": dropped,
                          "labels_agreeing_with_argmax": agree / len(pairs)}
    return summary


def _pairs_of(kept: list[tuple[str, float, bool]], scheme: str, rng) -> list[tuple[tuple, tuple]]:
    """(chosen, rejected) pairs of one prompt's (text, reward, ended) samples under a PAIR_SCHEMES scheme."""
    if scheme == "bt":
        # Disjoint pairs: every response is in at most one pair, so pairs of one prompt are independent draws,
        # as in the paper's data.
        out = []
        for a, b in zip(kept[0::2], kept[1::2]):
            first_wins = rng.random() < 1 / (1 + math.exp(-(a[1] - b[1])))
            out.append((a, b) if first_wins else (b, a))
        return out
    if scheme == "maxgap":
        candidates = [(max(kept, key=lambda x: x[1]), min(kept, key=lambda x: x[1]))] if len(kept) >= 2 else []
    else:
        candidates = list(itertools.combinations(kept, 2))
    return [(a, b) if a[1] > b[1] else (b, a) for a, b in candidates if a[1] != b[1]]


def _train_config(cfg: SentimentConfig, objective: str):
    from ivg_jax.training import TrainConfig

    kind = "pairs" if objective == "dpo" else "scored"
    n_train = len(read_jsonl(cfg.path / "data" / f"{kind}_train.jsonl"))
    steps_per_epoch = max(1, n_train // cfg.train_batch_size)
    epochs = cfg.dpo_epochs if objective == "dpo" else cfg.fudge_epochs
    total = max(1, int(math.ceil(epochs * steps_per_epoch)))
    every = max(1, min(total, steps_per_epoch // 2 or 1))
    return TrainConfig(
        objective=objective, model=models_source(cfg), train_data=str(cfg.path / "data" / f"{kind}_train.jsonl"),
        val_data=str(cfg.path / "data" / f"{kind}_val.jsonl"), output_dir=str(cfg.path / objective),
        template=cfg.guide_template, max_length=cfg.max_new_tokens + 64, batch_size=cfg.train_batch_size,
        epochs=epochs, learning_rate=cfg.dpo_learning_rate if objective == "dpo" else cfg.fudge_learning_rate,
        beta=cfg.dpo_beta, train_top_blocks=cfg.train_top_blocks, dtype=cfg.dtype, seed=cfg.seed,
        eval_every=every, save_every=every, keep_last=1, select=cfg.dpo_select if objective == "dpo" else "best")


def models_source(cfg: SentimentConfig) -> str:
    """Where the guides start from (and their reference)."""
    return Models(cfg).guide_source


def _stage_train(objective: str):
    def stage(cfg: SentimentConfig, models: Models, progress: bool = True) -> dict:
        from ivg_jax.training import train

        result = train(_train_config(cfg, objective), model=models.guide(), progress=progress)
        return {"best_step": result.best_step, "final_step": result.final_step, "best_metrics": result.best_metrics}

    return stage


def method_setup(cfg: SentimentConfig, models: Models, method: str):
    """-> (DecodeSettings, Guidance) of one method of the grid; the reference is the untouched guide model."""
    settings = cfg.decode_settings(method)
    return settings, settings.guidance(tuned=models.tuned, reference=models.guide, value=models.value)


def stage_decode(cfg: SentimentConfig, models: Models, progress: bool = True) -> dict:

    prompts = load_prompts(cfg, "test")
    for method in cfg.method_list:
        out_path = cfg.path / "decode" / f"{method}.jsonl"
        if out_path.exists():
            continue
        with _stopwatch(cfg, f"decode/{method}"):
            settings, guidance = method_setup(cfg, models, method)
            generator = getattr(models, generator_of(method))

            def work(first: int, chunk: Sequence[str], settings=settings, guidance=guidance,
                     generator=generator) -> list[dict]:
                seeds = [_hash_seed(cfg.seed, "test", first + i) % 2**31 for i in range(len(chunk))]
                out = settings.decode(generator(), chunk, guidance, seeds)
                return [{"prompt": p, "text": out.texts[i], "tokens": out.tokens[i, :out.lengths[i]].tolist(),
                         "kl": float(out.kl[i].sum()), "score": float(out.scores[i]),
                         "forward_tokens": float(out.forward_tokens_per_prompt[i])} for i, p in enumerate(chunk)]

            _write_jsonl(out_path, _in_parts(cfg.path / "decode" / f"{method}.parts", prompts, cfg.decode_batch,
                                             f"decode {method}", progress, work))
    clock = read_clock(cfg)
    return {m: clock[f"decode/{m}"] for m in cfg.method_list if f"decode/{m}" in clock}


def stage_evaluate(cfg: SentimentConfig, models: Models, progress: bool = True) -> dict:
    from ivg_jax.evaluation.metrics import bootstrap_ci, continuation_nll, distinct_n
    from ivg_jax.evaluation.sentiment import VaderReward

    gold = VaderReward()
    results, rewards_of = {}, {}
    for method in cfg.method_list:
        rows = read_jsonl(cfg.path / "decode" / f"{method}.jsonl")
        rewards = rewards_of[method] = gold([r["prompt"] + r["text"] for r in rows])
        nll = continuation_nll(models.base(), [r["prompt"] for r in rows], response_ids(models, method, rows),
                               cfg.base_template)
        mean, lo, hi = bootstrap_ci(rewards, seed=_hash_seed(cfg.seed, method))
        texts = [r["text"] for r in rows]
        results[method] = {"reward": mean, "reward_ci": [lo, hi], "nll": float(np.nanmean(nll)),
                           "kl": float(np.mean([r["kl"] for r in rows])), "distinct_2": distinct_n(texts, 2),
                           "distinct_3": distinct_n(texts, 3),
                           "forward_tokens": float(np.mean([r["forward_tokens"] for r in rows])),
                           "compute": float(np.mean([r["forward_tokens"] for r in rows]))
                           * base_forward_factor(cfg, method), "prompts": len(rows)}
    # Same prompts for every method, so IVG is compared per prompt: the interval of the mean paired difference
    # is much tighter than two overlapping marginal intervals suggest.
    for method, others in paired_comparisons(list(rewards_of)):
        if method in results and all(m in rewards_of for m in others):
            results[method]["minus"] = {
                m: list(bootstrap_ci(rewards_of[method] - rewards_of[m], seed=_hash_seed(cfg.seed, method, m)))
                for m in others}
    table = results_table(cfg, results)
    _atomic_write(cfg.path / "results.json", json.dumps(results, indent=2))
    _atomic_write(cfg.path / "results.md", table + "\n")
    plot_results(cfg, results)
    return {"table": table}


def paired_comparisons(methods: Sequence[str]) -> list[tuple[str, list[str]]]:
    """[(method, [others it is compared with per prompt])], in the table's order: the run's lead method against every
    other, then the implicit guide alone against the base (whether it has an effect of its own). The lead is IVG; a
    run without it (guides of another tokenizer act at chunk level only) leads with CBS explicit, and CBS implicit
    asks the implicit guide's question."""
    lead = "ivg" if "ivg" in methods else "cbs_explicit"
    single = "eft" if lead == "ivg" else "cbs_implicit"
    return [(lead, [m for m in methods if m != lead]), (single, ["base"])]


STAGE_FNS = {"sample": stage_sample, "label": stage_label, "dpo": _stage_train("dpo"),
             "fudge": _stage_train("fudge"), "decode": stage_decode, "evaluate": stage_evaluate}


# ------------------------------------------------------------------------------------------------- reporting

def results_table(cfg: SentimentConfig, results: dict) -> str:
    base = results.get("base")
    lines = ["| method | gold reward (95% CI) | NLL (nats/token) | ΔNLL vs base | KL(guided‖base) (nats) "
             "| distinct-2 | distinct-3 | compute / prompt (base-forward tokens) |",
             "|---|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        label = cfg.label(method)
        delta = f"{r['nll'] - base['nll']:+.2f}" if base else "—"
        lines.append(f"| {label} | {r['reward']:.2f} [{r['reward_ci'][0]:.2f}, {r['reward_ci'][1]:.2f}] "
                     f"| {r['nll']:.2f} | {delta} | {r['kl']:.2f} | {r['distinct_2']:.2f} | {r['distinct_3']:.2f} "
                     f"| {r['compute']:.0f} |")
    paired = [(a, b, d) for a, _ in paired_comparisons(list(results))
              for b, d in results.get(a, {}).get("minus", {}).items()]
    if paired:
        lines += ["", "| paired difference (same prompts) | gold reward difference (95% paired CI) "
                  "| compute ratio |", "|---|---|---|"]
        for a, b, (mean, lo, hi) in paired:
            ratio = results[a]["compute"] / results[b]["compute"]
            lines.append(f"| {_SHORT.get(a, a)} − {cfg.label(b)} | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] "
                         f"| {ratio:.1f}x |")
    if cfg.guide_model:
        cost = member_costs(cfg.model, cfg.guide_model)
        lines += ["", f"Weak-to-strong: guides from {cfg.guide_model}, {cost['guide'] / cost['base']:.2f}x the base's "
                  f"({cfg.model}) FLOPs per token; compute counts each model's forward tokens at its FLOPs per "
                  "token relative to the base's (trunks shared between guides not discounted)."]
    return "\n".join(lines)


_SHORT = {"ivg": "IVG", "eft": "EFT", "cbs_explicit": "CBS explicit", "cbs_implicit": "CBS implicit"}


def plot_results(cfg: SentimentConfig, results: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for x_key, x_label, name in (("kl", "KL(guided ‖ base), nats per response", "reward_vs_kl.png"),
                                 ("compute", "compute per prompt (base-forward tokens)", "reward_vs_compute.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, r in results.items():
            lo, hi = r["reward_ci"]
            ax.errorbar(r[x_key], r["reward"], yerr=[[r["reward"] - lo], [hi - r["reward"]]], fmt="o", capsize=3,
                        label=cfg.label(method))
        if x_key == "compute":
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel("gold reward (VADER logit), mean ± 95% CI")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(cfg.path / name, dpi=120)
        plt.close(fig)


# ------------------------------------------------------------------------------------------------------ run

def _covers(summary: dict, cfg: SentimentConfig) -> bool:
    """Whether a finished stage's marker covers this run's methods (decode / evaluate redo only what is new)."""
    return "methods" not in summary or set(cfg.method_list) <= set(summary["methods"])


class _Shells:
    """`Models` played by configs and tokenizers alone (no weights): the guides start from the guide model, so
    what its tokenizer and context accept, they accept. The value model is the guide model with the vocab-sized
    value head that the fudge stage gives it."""

    def __init__(self, base_shell, guide_shell):
        value = dataclasses.replace(guide_shell, config=guide_shell.config.replace(head="value"))
        self.base = lambda: base_shell
        self.guide = self.tuned = lambda: guide_shell
        self.value = lambda: value


def preflight(cfg: SentimentConfig, stages: Sequence[str] = STAGES) -> None:
    """Every check of the run's sampling and decoding (prompt files, templates, each prompt's tokens plus the
    budget against the context, W/K/L) on the base's tokenizer and config alone, before the run directory is
    created or any weights load: a bad setting is one line, and the corrected rerun is not refused as a run with
    other settings."""
    from ivg_jax.loading import inspect_model

    prompts = {split: load_prompts(cfg, split) for split in ("train", "val", "test")}
    if not {"sample", "decode"} & set(stages):
        return
    names = Models(cfg)
    shell = inspect_model(names.base_source)
    guide_shell = inspect_model(names.guide_source) if cfg.guide_model else shell
    if "sample" in stages:
        settings = cfg.sample_settings
        for split in ("train", "val"):
            with _naming(f"{split} prompts (sampling)"):
                settings.preflight(guide_shell, prompts[split], settings.guidance())
    if "decode" in stages:
        shells = _Shells(shell, guide_shell)
        for method in cfg.method_list:
            settings, guidance = method_setup(cfg, shells, method)
            with _naming(f"test prompts ({method})"):
                settings.preflight(getattr(shells, generator_of(method))(), prompts["test"], guidance)


@contextlib.contextmanager
def _naming(where: str):
    """Prefixes an InputError with the part of the run it concerns (which split, which method)."""
    try:
        yield
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def run(cfg: SentimentConfig, stages: Sequence[str] = STAGES, progress: bool = True,
        log: Callable[[str], None] = print) -> dict:
    """Runs the requested stages in order, skipping finished ones. -> {stage: summary}."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise InputError(f"unknown stages {unknown}; the pipeline's stages are {', '.join(STAGES)}")
    preflight(cfg, stages)
    cfg.path.mkdir(parents=True, exist_ok=True)
    _check_config(cfg)
    models = Models(cfg)
    summaries = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        if models.weights != cfg.stage_weights(stage):
            models = Models(cfg, cfg.stage_weights(stage))  # the other stage's weights are released
        marker = cfg.path / "stages" / f"{stage}.json"
        earlier = json.loads(marker.read_text()) if marker.exists() else None
        if earlier is not None and _covers(earlier, cfg):
            summaries[stage] = earlier
            log(f"[{stage}] done earlier ({marker})")
            continue
        with _stopwatch(cfg, stage) as clock:
            summary = STAGE_FNS[stage](cfg, models, progress)
        summary |= {"seconds": round(clock["seconds"], 1), "sittings": clock["sittings"]}
        if stage in ("decode", "evaluate"):
            summary["methods"] = cfg.method_list
        _mark_done(cfg, stage, summary)
        summaries[stage] = summary
        log(f"[{stage}] {summary['seconds']:.0f} s")
    return summaries
