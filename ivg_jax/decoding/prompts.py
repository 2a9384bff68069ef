"""Prompts -> left-padded token arrays, bucketed so a dataset compiles a handful of programs."""

from __future__ import annotations

import numpy as np

from ivg_jax.errors import InputError, check_template


def bucket(n: int, multiple: int = 8) -> int:
    """Rounds a length up to a multiple, so batches of similar lengths share one compiled program."""
    return max(multiple, -(-n // multiple) * multiple)


def encode(tokenizer, prompts, template: str = "{prompt}", add_special_tokens: bool = False,
           pad_id: int = 0, multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """prompts: strings (formatted with `template`) or lists of token ids -> (ids, mask), both [B, T_bucket],
    left-padded."""
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
            rows.append(tokenizer(template.format(prompt=p), add_special_tokens=add_special_tokens)["input_ids"])
        else:
            rows.append([int(t) for t in p])
        if not rows[-1]:
            raise InputError(f"prompt {i} is empty after tokenisation")
    width = bucket(max(len(r) for r in rows), multiple)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = True
    return ids, mask
