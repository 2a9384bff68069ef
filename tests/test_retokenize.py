"""Chunk-level guides with another tokenizer: scores re-tokenised on the host between chunks, caches rolled back
to the longest common prefix — checked against full re-scoring, and against the in-graph search with a guide
whose vocabulary is a permutation of the base's (same function, other ids: the searches must agree)."""

import dataclasses

import numpy as np
import pytest
from oracle import word_tokenizer
from reference_search import log_softmax

import ivg_jax
from ivg_jax.config import ModelConfig
from ivg_jax.decoding.retokenize import HostChunkScorer

WORDS = ["p0", "</s>"] + [f"w{i}" for i in range(2, 61)]
PERM = np.random.default_rng(0).permutation(np.arange(2, 61))
SHUFFLED = WORDS[:2] + [WORDS[i] for i in PERM]  # guide id j holds the base's word PERM[j - 2]
CFG = ModelConfig(family="llama", vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ff=48, pad_token_id=0, eos_token_ids=(1,))


def _model(seed, head="lm", words=WORDS):
    m = ivg_jax.init_model(CFG.replace(head=head), seed)
    params = dict(m.params)
    params["embed"] = params["embed"] * 30.0
    return dataclasses.replace(m.with_params(params), tokenizer=word_tokenizer(words, eos_only=True))


def _permuted(model):
    """The same function over the shuffled vocabulary: guide id j <- base id of the same word."""
    base_id = np.concatenate([[0, 1], PERM])  # guide id -> base id
    params = dict(model.params)
    params["embed"] = params["embed"][base_id]
    for head in ("lm_head", "value_head"):
        if head in params:
            params[head] = params[head][:, base_id]
    return dataclasses.replace(model.with_params(params), tokenizer=word_tokenizer(SHUFFLED, eos_only=True))


def _scored_ids(tokenizer, context, text):
    """(prompt ids, prompt + response ids) by the scoring rule: the response tokenised on its own, appended."""
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ids, ids + tokenizer(text, add_special_tokens=False)["input_ids"]


def _full_implicit(tuned, ref, context, text, weight):
    ids, full = _scored_ids(tuned.tokenizer, context, text)
    lp_t = log_softmax(np.asarray(ivg_jax.forward(tuned, [full]))[0])
    lp_r = log_softmax(np.asarray(ivg_jax.forward(ref, [full]))[0])
    return sum(weight * (lp_t[p - 1, full[p]] - lp_r[p - 1, full[p]]) for p in range(len(ids), len(full)))


def test_rollback_rescoring_equals_full_rescoring():
    """Responses that change earlier tokens (not only append) roll the guide's caches back and still give the
    scores of scoring the whole text from scratch."""
    tuned, ref, value = _model(1), _model(2), _model(3, head="value")
    prompts = ["w5 w6", "w7"]
    texts = [["w9 w10", "w11"], ["w9 w12 w13", "w11 w14"], ["w20", "w11 w14 w15 w16"]]
    implicit = HostChunkScorer("implicit", [tuned, ref], np.array([[0.7], [1.3]]), "{prompt} ", prompts, 1, 32)
    explicit = HostChunkScorer("explicit", [value], np.zeros((2, 0)), "{prompt} ", prompts, 1, 32)
    for step in texts:
        got = implicit.score(step)
        for i, (p, t) in enumerate(zip(prompts, step)):
            assert got[i] == pytest.approx(_full_implicit(tuned, ref, p + " ", t, [0.7, 1.3][i]), abs=1e-4)
        got = explicit.score(step)
        for i, (p, t) in enumerate(zip(prompts, step)):
            _, full = _scored_ids(value.tokenizer, p + " ", t)
            values = np.asarray(ivg_jax.forward(value, [full]))[0]
            assert got[i] == pytest.approx(values[len(full) - 2, full[-1]], abs=1e-4)


def _compare_searches(token, chunk, seed, max_new_tokens):
    """The same search with an in-graph guide and with its permuted-vocabulary twin scored on the host."""
    base = _model(0)
    same_tuned, same_ref, same_value = _model(1), _model(2), _model(3, head="value")
    token_guides = [ivg_jax.ImplicitGuide(_model(4), _model(5), 1.0, template="{prompt} ")]
    if chunk == "explicit":
        inside = ivg_jax.Guidance(implicit=token_guides, explicit=ivg_jax.ExplicitGuide(same_value, 1.0, "{prompt} "),
                                  token=token, chunk=chunk, base_template="{prompt} ")
        foreign = dataclasses.replace(inside, explicit=ivg_jax.ExplicitGuide(_permuted(same_value), 1.0, "{prompt} "))
    else:
        inside = ivg_jax.Guidance(implicit=[ivg_jax.ImplicitGuide(same_tuned, same_ref, 0.8, "{prompt} ")],
                                  token=token, chunk=chunk, base_template="{prompt} ")
        foreign = dataclasses.replace(inside, implicit=[
            ivg_jax.ImplicitGuide(_permuted(same_tuned), _permuted(same_ref), 0.8, "{prompt} ")])
    kwargs = dict(search=ivg_jax.Search(2, 2, 3), sampling=ivg_jax.Sampling(1.0), max_new_tokens=max_new_tokens,
                  seed=seed)
    prompts = ["w5 w6", "w7 w8 w9", "w10"]
    a = ivg_jax.generate(base, prompts, inside, **kwargs)
    b = ivg_jax.generate(base, prompts, foreign, **kwargs)
    np.testing.assert_array_equal(a.rows["tokens"], b.rows["tokens"])
    np.testing.assert_allclose(a.rows["scores"], b.rows["scores"], atol=1e-4)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.texts == b.texts
    return b


@pytest.mark.parametrize("token,chunk", [("none", "explicit"), ("implicit", "explicit"), ("none", "implicit")])
def test_permuted_vocabulary_guide_matches_in_graph_search(token, chunk):
    _compare_searches(token, chunk, seed=3, max_new_tokens=8)


def test_rows_ending_on_eos_are_scored_with_the_guides_eos():
    """A seed where rows stop on EOS: the host scorer appends the guide's EOS, so scores still match in-graph."""
    out = _compare_searches("none", "explicit", seed=0, max_new_tokens=12)
    assert out.rows["done"].any()


def test_mixed_vocabularies_at_chunk_level_are_refused():
    base = _model(0)
    g = [ivg_jax.ImplicitGuide(_model(1), _model(2)), ivg_jax.ImplicitGuide(_permuted(_model(1)), _permuted(_model(2)))]
    with pytest.raises(ivg_jax.UnsupportedError, match="mix"):
        ivg_jax.generate(base, ["w5"], ivg_jax.Guidance(implicit=g, chunk="implicit"), ivg_jax.Search(2, 2, 3))


def test_foreign_guides_with_different_templates_are_refused():
    base = _model(0)
    g = [ivg_jax.ImplicitGuide(_permuted(_model(1)), _permuted(_model(2)), template="{prompt} ",
                               reference_template="Review: {prompt} ")]
    with pytest.raises(ivg_jax.UnsupportedError, match="one template"):
        ivg_jax.generate(base, ["w5"], ivg_jax.Guidance(implicit=g, chunk="implicit"), ivg_jax.Search(2, 2, 3))


def _merging_tokenizer():
    """A character BPE over a..z and space whose merges cross a prompt/response boundary ("a" + "b" -> "ab")."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    symbols = ["<pad>", "</s>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [" "]
    merges = [("a", "b"), ("ab", "c"), ("c", "d"), (" ", "e")]
    vocab = {t: i for i, t in enumerate(symbols + ["".join(m) for m in merges])}
    tok = Tokenizer(models.BPE(vocab, merges))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def test_a_response_merging_into_the_prompts_last_token_is_scored_whole():
    """Prompt "xa", responses starting with "b": tokenising prompt + response as one string merges "a" + "b",
    and summing from the prompt's token count dropped that boundary token. The scorer scores exactly the
    response's own tokens, as a from-scratch forward over prompt ids + response ids does."""
    tok = _merging_tokenizer()
    cfg = CFG.replace(vocab_size=len(tok))

    def model(seed, head="lm"):
        m = ivg_jax.init_model(cfg.replace(head=head), seed)
        return dataclasses.replace(m.with_params({**m.params, "embed": m.params["embed"] * 30.0}), tokenizer=tok)

    tuned, ref, value = model(1), model(2), model(3, head="value")
    prompts = ["xa", "qab"]
    assert tok("xabc d", add_special_tokens=False)["input_ids"][:2] != tok("xa")["input_ids"] + tok("b")["input_ids"]
    implicit = HostChunkScorer("implicit", [tuned, ref], np.array([[1.0], [0.5]]), "{prompt}", prompts, 1, 32)
    explicit = HostChunkScorer("explicit", [value], np.zeros((2, 0)), "{prompt}", prompts, 1, 32)
    for step in (["b", "cd"], ["bc d", "cde"], ["bcd ee", "x"]):
        got_implicit, got_explicit = implicit.score(step), explicit.score(step)
        for i, (p, t) in enumerate(zip(prompts, step)):
            assert got_implicit[i] == pytest.approx(_full_implicit(tuned, ref, p, t, [1.0, 0.5][i]), abs=1e-4)
            _, full = _scored_ids(tok, p, t)
            values = np.asarray(ivg_jax.forward(value, [full]))[0]
            assert got_explicit[i] == pytest.approx(values[len(full) - 2, full[-1]], abs=1e-4)
