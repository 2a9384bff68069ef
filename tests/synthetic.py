"""A synthetic preference task with a known answer: the gold reward counts the marker word "good".

Tiny random Llama models over a word-level tokenizer learn it in seconds on a CPU, which makes it the test bed
for the training loops (DPO accuracy, value-model MSE) and for decoding with the trained guides.
"""

from __future__ import annotations

import json

import numpy as np
from oracle import word_tokenizer

from ivg_jax.config import ModelConfig
from ivg_jax.model.api import init_model

WORDS = ["<pad>", "<eos>", "<unk>", "good"] + [f"w{i}" for i in range(28)]
MARKER = "good"
FILLER = WORDS[4:]


def tiny_config(n_layers: int = 2) -> ModelConfig:
    return ModelConfig(family="llama", vocab_size=len(WORDS), d_model=32, n_layers=n_layers, n_heads=4,
                       n_kv_heads=2, head_dim=8, d_ff=64, eos_token_ids=(1,), pad_token_id=0)


def tiny_model(seed: int = 0, n_layers: int = 2):
    return init_model(tiny_config(n_layers), seed=seed, tokenizer=word_tokenizer(WORDS))


def reward(text: str) -> float:
    return float(text.split().count(MARKER))


def _words(rng, n: int) -> list[str]:
    return [FILLER[i] for i in rng.integers(0, len(FILLER), n)]


def preference_records(n: int, seed: int = 0) -> list[dict]:
    """Chosen responses contain the marker once, rejected ones never; both 3-5 words."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = " ".join(_words(rng, 2))
        chosen = _words(rng, int(rng.integers(2, 5)))
        chosen.insert(int(rng.integers(0, len(chosen) + 1)), MARKER)
        rejected = _words(rng, int(rng.integers(3, 6)))
        out.append({"prompt": prompt, "chosen": " ".join(chosen), "rejected": " ".join(rejected)})
    return out


def scored_records(n: int, seed: int = 0, p_marker: float = 0.25, length: int = 4) -> list[dict]:
    """Responses of `length` words, each the marker with probability p; reward = marker count. Two responses
    per prompt so pairwise accuracy has same-prompt pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            prompt = " ".join(_words(rng, 2))
        words = [MARKER if rng.random() < p_marker else w for w in _words(rng, length)]
        text = " ".join(words)
        out.append({"prompt": prompt, "response": text, "reward": reward(text)})
    return out


def write_jsonl(path, records) -> str:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)
