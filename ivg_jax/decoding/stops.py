"""Stop strings matched in-graph, across token boundaries.

A stop string may span several tokens ("\\n\\n" is often "\\n" + "\\n"), so "the token's text contains it" is not
enough. Each stop string s of n characters becomes a Knuth–Morris–Pratt automaton over characters whose state
q ∈ [0, n] is the length of the longest prefix of s that ends the text so far; q = n means s occurred (it is
absorbing). Feeding a whole token is a table lookup: `table[s, q, token]` is the state after the token's text,
precomputed once per (tokenizer, stop strings) for every state and every vocabulary id. In the decode step a row
keeps one state per stop string ([R, S] int32) and stops on the token that completes a match, so new tokens,
chunk scores and KL count nothing after it; the text is trimmed at the match on the host.

A token's text is what it adds to the decoded string *in context*: decode([anchor, id]) minus decode([anchor]),
so SentencePiece's "▁world" reads " world", not the stripped "world" that decoding it alone gives.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ivg_jax.errors import InputError


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Stops:
    """What ends a row, as data of the compiled program: `ids` [n] (EOS or explicit stop ids; [-1] when none),
    `table` [S, Q, V] int32 (state after each token, Q = longest stop string + 1), `final` [S] int32 (n of each
    string: reaching it is a match). S = 0 when there are no stop strings."""

    ids: jax.Array
    table: jax.Array
    final: jax.Array

    @property
    def n_strings(self) -> int:
        return self.final.shape[0]


def stop_token_ids(stop_ids: Sequence[int], vocab_size: int | None = None) -> np.ndarray:
    """Ids that end a row (EOS or the caller's), as a non-empty array ([-1] when none). With `vocab_size` (the
    caller's ids), an id the model can never sample is refused: the rows would silently never stop on it."""
    if isinstance(stop_ids, (str, bytes)) or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                                      for i in stop_ids):
        raise InputError(f"stop_ids must be a list of token ids (ints); got {stop_ids!r} (for text, pass stop "
                         "strings)")
    if vocab_size is not None:
        outside = sorted({int(i) for i in stop_ids if not 0 <= i < vocab_size})
        if outside:
            raise InputError(f"stop id {outside[0]} is outside the model's vocabulary [0, {vocab_size}); pass ids of "
                             "this model's tokenizer")
    return np.asarray(sorted({int(i) for i in stop_ids}) or [-1], np.int32)


def build_stops(tokenizer, stop_strings: Sequence[str], stop_ids: Sequence[int], vocab_size: int,
                check_ids: bool = True) -> Stops:
    """`check_ids`: refuse ids outside the vocabulary (off for a config's own EOS ids, which are not the caller's)."""
    ids = stop_token_ids(stop_ids, vocab_size if check_ids else None)
    strings = tuple(stop_strings)
    for s in strings:
        if not isinstance(s, str) or not s:
            raise InputError(f"stop strings must be non-empty strings; got {s!r} (an empty one would stop at once)")
    if not strings:
        return Stops(ids, np.zeros((0, 1, vocab_size), np.int32), np.zeros((0,), np.int32))
    if tokenizer is None:
        raise InputError("stop strings need a tokenizer; pass stop token ids instead")
    width = max(len(s) for s in strings) + 1
    table = np.zeros((len(strings), width, vocab_size), np.int32)
    for k, s in enumerate(strings):
        table[k, :len(s) + 1] = _cached(tokenizer, ("table", s, vocab_size),
                                        lambda s=s: transition_table(s, token_texts(tokenizer, vocab_size)))
        table[k, len(s) + 1:] = len(s)  # unused states of shorter strings: never reached
    return Stops(ids, table, np.asarray([len(s) for s in strings], np.int32))


# Per tokenizer (dropped with it): its token texts and stop tables, built once, not once per generate call.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(tokenizer, key, build):
    entries = _CACHE.setdefault(tokenizer, {})
    if key not in entries:
        entries[key] = build()
    return entries[key]


def token_texts(tokenizer, vocab_size: int) -> list[str]:
    """The text each id adds after an anchor token ("" for ids the tokenizer does not have), cached."""
    def build():
        anchor = tokenizer("a", add_special_tokens=False)["input_ids"][-1:]
        head = tokenizer.decode(anchor)
        n = min(len(tokenizer), vocab_size)
        decoded = tokenizer.batch_decode([anchor + [i] for i in range(n)])
        texts = [t[len(head):] if t.startswith(head) else tokenizer.decode([i]) for i, t in enumerate(decoded)]
        return texts + [""] * (vocab_size - n)

    return _cached(tokenizer, ("texts", vocab_size), build)


def kmp_delta(s: str) -> dict[str, np.ndarray]:
    """{char: [n+1] next state} for the characters of s (any other character sends every state to 0)."""
    n = len(s)
    fail = [0] * (n + 1)  # fail[q]: longest proper border of s[:q]
    for q in range(2, n + 1):
        b = fail[q - 1]
        while b and s[b] != s[q - 1]:
            b = fail[b]
        fail[q] = b + 1 if s[b] == s[q - 1] else 0
    delta = {}
    for c in set(s):
        nxt = np.zeros(n + 1, np.int32)
        for q in range(n + 1):
            if q == n:
                nxt[q] = n  # absorbing: the string has occurred
                continue
            b = q
            while b and s[b] != c:
                b = fail[b]
            nxt[q] = b + 1 if s[b] == c else 0
        delta[c] = nxt
    return delta


def transition_table(s: str, texts: Sequence[str]) -> np.ndarray:
    """[n+1, V] the automaton's state after feeding each token's text from each state, vectorised over the
    vocabulary one character position at a time."""
    n, vocab = len(s), len(texts)
    delta = kmp_delta(s)
    state = np.tile(np.arange(n + 1, dtype=np.int32)[:, None], (1, vocab))  # [n+1, V]
    lengths = np.fromiter((len(t) for t in texts), np.int64, vocab)
    for j in range(int(lengths.max(initial=0))):
        live = np.nonzero(lengths > j)[0]
        chars = np.asarray([texts[i][j] for i in live])
        new = np.where(state[:, live] == n, n, 0)  # characters outside s reset the match
        for c, nxt in delta.items():
            cols = chars == c
            if cols.any():
                new[:, cols] = nxt[state[:, live[cols]]]
        state[:, live] = new
    return state


def advance(stops: Stops, state: jax.Array, token: jax.Array, active: jax.Array) -> tuple[jax.Array, jax.Array]:
    """state [R, S], token [R], active [R] -> (new state [R, S], stopped [R]: a stop id or a completed match)."""
    strings = jnp.arange(stops.n_strings)
    new = stops.table[strings[None, :], state, token[:, None]]
    new = jnp.where(active[:, None], new, state)
    matched = jnp.any(new == stops.final[None, :], axis=1)
    return new, active & (jnp.isin(token, stops.ids) | matched)


def trim(text: str, stop_strings: Sequence[str]) -> str:
    """The text up to the first occurrence of any stop string."""
    cut = min((text.find(s) for s in stop_strings if s in text), default=-1)
    return text if cut < 0 else text[:cut]
