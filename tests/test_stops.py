"""Stop strings across token boundaries: the automaton tables against brute-force string search, and the engine
stopping on the token that completes a multi-token match (nothing after it counted)."""

import numpy as np
import pytest
from oracle import word_tokenizer

import ivg_jax
from ivg_jax.config import ModelConfig
from ivg_jax.decoding.stops import build_stops, transition_table
from ivg_jax.errors import InputError


def brute_state(s: str, q: int, text: str) -> int:
    """The automaton's state by definition: len(s) if s occurs in s[:q] + text, else the longest prefix of s that
    ends s[:q] + text."""
    seen = s[:q] + text
    if s in seen:
        return len(s)
    return max(k for k in range(len(s)) if seen.endswith(s[:k]))


@pytest.mark.parametrize("stop", ["\n\n", "aab", "abab", "ab\nab", "x", "aaaa"])
def test_transition_table_equals_brute_force(stop):
    rng = np.random.default_rng(len(stop))
    alphabet = list("ab\nx ")
    texts = ["", "\n\n\n", "aabaab", "ababab"] + ["".join(rng.choice(alphabet, rng.integers(1, 7)))
                                                  for _ in range(300)]
    table = transition_table(stop, texts)
    for q in range(len(stop) + 1):
        for v, text in enumerate(texts):
            assert table[q, v] == (len(stop) if q == len(stop) else brute_state(stop, q, text)), (q, repr(text))


def test_empty_stop_string_is_refused():
    with pytest.raises(InputError, match="non-empty"):
        build_stops(None, [""], [1], 10)


WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(58)]


def test_a_stop_string_spanning_tokens_ends_the_row_on_its_last_token():
    cfg = ModelConfig(family="llama", vocab_size=len(WORDS), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=8, d_ff=48, pad_token_id=0, eos_token_ids=(1,))
    model = ivg_jax.init_model(cfg, 0, tokenizer=word_tokenizer(WORDS))
    sampling = ivg_jax.Sampling(1.0)
    free = ivg_jax.generate(model, ["w3 w4", "w5"], sampling=sampling, max_new_tokens=12, seed=7, stop_ids=[])
    assert (free.lengths == 12).all()
    tokens = free.tokens[0]
    words = [WORDS[t] for t in tokens]
    # A stop string made of the end of token 4 and the start of token 5: no single token contains it.
    stop = f"{words[4][-1:]} {words[5][:2]}"
    assert all(stop not in f" {w}" for w in WORDS)
    first = min(i for i in range(1, 12) if stop in " ".join(words[:i + 1]))
    out = ivg_jax.generate(model, ["w3 w4", "w5"], sampling=sampling, max_new_tokens=12, seed=7, stop_ids=[],
                           stop_strings=[stop])
    assert out.lengths[0] == first + 1  # stopped on the token completing the match
    np.testing.assert_array_equal(out.tokens[0, :first + 1], tokens[:first + 1])
    assert (out.tokens[0, first + 1:] == 0).all() and (out.kl[0, first + 1:] == 0).all()
    assert out.texts[0] == " ".join(words[:first + 1]).split(stop)[0]
    # The other row runs on unless it meets the string itself.
    other = " ".join(WORDS[t] for t in free.tokens[1])
    if stop not in other:
        np.testing.assert_array_equal(out.tokens[1], free.tokens[1])
