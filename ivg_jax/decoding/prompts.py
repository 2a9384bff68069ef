"""Prompts -> left-padded token arrays, bucketed so a dataset compiles a handful of programs."""

from __future__ import annotations

import numpy as np

from ivg_jax.errors import InputError, check_template


def bucket(n: int, multiple: int = 8) -> int:
    """Rounds a length up to a multiple, so batches of similar lengths share one compiled program."""
    return max(multiple, -(-n // multiple) * multiple)


def prompt_token_ids(tokenizer, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """A prompt's ids as the model's own tokenizer makes them by default: transformers adds BOS for Llama-2,
    Llama-3, Mistral... and nothing for GPT-2 or SmolLM2, and those models were trained on what it adds. Not
    when the text already starts with the BOS text (a template that writes it), which would double it, and never
    a trailing EOS (a prompt is continued, not ended). `add_special_tokens` True/False forces the choice."""
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if add_special_tokens is False:
        return plain
    if add_special_tokens is None:
        bos = getattr(tokenizer, "bos_token", None)
        if bos and text.startswith(bos):
            return plain
    default = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    for start in range(len(default) - len(plain) + 1):  # keep the specials before the text, drop those after it
        if default[start:start + len(plain)] == plain:
            return default[:start] + plain
    return default


def encode(tokenizer, prompts, template: str = "{prompt}", add_special_tokens: bool | None = None,
           pad_id: int = 0, multiple: int = 8, vocab_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """prompts: strings (formatted with `template`) or lists of token ids -> (ids, mask), both [B, T_bucket],
    left-padded. Special tokens follow `prompt_token_ids` (the tokenizer's default). With `vocab_size`, token
    ids outside [0, vocab_size) are refused (an embedding lookup would silently clamp them)."""
    if isinstance(prompts, (str, bytes)):
        raise InputError("prompts must be a list of strings or of token-id lists, not a single string")
    if not prompts:
        raise InputError("prompts is empty")
    check_template(template)
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tokenizer is None:
                raise InputError("string prompts need a model with a tokenizer; pass token ids instead")
            rows.append(prompt_token_ids(tokenizer, template.format(prompt=p), add_special_tokens))
        else:
            rows.append([int(t) for t in p])
        if not rows[-1]:
            raise InputError(f"prompt {i} is empty after tokenisation")
        if vocab_size is not None and not all(0 <= t < vocab_size for t in rows[-1]):
            bad = next(t for t in rows[-1] if not 0 <= t < vocab_size)
            raise InputError(f"prompt {i} holds token id {bad}, outside the model's vocabulary [0, {vocab_size}); "
                             "pass ids of this model's tokenizer")
    width = bucket(max(len(r) for r in rows), multiple)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = True
    return ids, mask
