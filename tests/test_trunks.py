"""Shared trunks: members whose bottom blocks are bitwise equal (top-N-block guides and their reference) run
them once per step. Found from the weights alone; the search's results are bit-identical to running every model
in full (the oracle: the same call with sharing switched off); the compiled program does less work."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ivg_jax
from ivg_jax.config import ModelConfig
from ivg_jax.decoding import engine
from ivg_jax.decoding.members import Members
from ivg_jax.decoding.step_cost import token_step_cost
from ivg_jax.decoding.trunks import Trunk, shared_trunks
from ivg_jax.model.api import attach_head, init_model

CFG = ModelConfig(family="llama", vocab_size=50, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ff=48, pad_token_id=0, eos_token_ids=(1,))
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]


def retrained(model, from_layer: int, seed: int):
    """The model with blocks from `from_layer` up changed, the rest untouched (what top-N training leaves)."""
    key = jax.random.key(seed)
    blocks = jax.tree.map(lambda a: a.at[from_layer:].add(0.05 * jax.random.normal(key, a[from_layer:].shape,
                                                                                   a.dtype)),
                          model.params["blocks"])
    return model.with_params({**model.params, "blocks": blocks})


@pytest.fixture(scope="module")
def models():
    base = init_model(CFG, seed=0)
    return {"base": base, "tuned": retrained(base, 3, 1),
            "value": retrained(attach_head(base, "value", scale=0.1, seed=2), 2, 3),
            "other": init_model(CFG, seed=9)}


def _trunks(base, guidance, prompts=PROMPTS):
    search = ivg_jax.Search(2, 2, 3) if guidance.chunk != "none" else ivg_jax.Search()
    return engine.plan(base, prompts, guidance, search, None, 9).program.trunks


def ivg(m, tuned=None, reference=None, template="{prompt}"):
    return ivg_jax.Guidance(implicit=[ivg_jax.ImplicitGuide(tuned or m["tuned"], reference or m["base"], 1.0,
                                                            template=template)],
                            explicit=ivg_jax.ExplicitGuide(m["value"], 1.0, template=template),
                            token="implicit", chunk="explicit")


def test_depth_is_the_shortest_equal_prefix_of_the_group(models):
    # base, tuned (blocks 3+ changed), reference = base, value (blocks 2+ changed, another head): share 2 blocks.
    assert _trunks(models["base"], ivg(models)) == (Trunk((0, 1, 2, 3), 2),)


def test_unrelated_weights_or_a_changed_embedding_share_nothing(models):
    assert _trunks(models["other"], ivg(models)) == (Trunk((1, 2, 3), 2),)  # the base is another model
    p = models["tuned"].params
    embed = models["tuned"].with_params({**p, "embed": p["embed"].at[7, 0].add(1e-3)})
    assert _trunks(models["other"], ivg(models, tuned=embed)) == (Trunk((2, 3), 2),)


def test_a_bit_pattern_differs_even_where_values_compare_equal(models):
    # -0.0 == 0.0 as numbers, but they are different weights: only bitwise equality shares.
    p = models["tuned"].params
    blocks = jax.tree.map(lambda a: a, p["blocks"])
    blocks["attn_norm"]["scale"] = blocks["attn_norm"]["scale"].at[0, 0].set(0.0)
    zero = models["tuned"].with_params({**p, "blocks": blocks})
    blocks = jax.tree.map(lambda a: a, p["blocks"])
    blocks["attn_norm"]["scale"] = blocks["attn_norm"]["scale"].at[0, 0].set(-0.0)
    negative_zero = models["tuned"].with_params({**p, "blocks": blocks})
    assert shared_trunks(Members(zero, (negative_zero,), (zero,)), [(np.ones((1, 2)), np.ones((1, 2)))] * 3) == \
        (Trunk((0, 2), 4),)


def test_other_prompt_ids_or_dtypes_are_not_shared(models):
    # The base reads "{prompt}"; guides read another template: their ids differ, so the base runs alone.
    prompts = ["w5 w6", "w7"]
    tok = _word_tokenizer()
    m = {k: _with_tokenizer(v, tok) for k, v in models.items()}
    assert _trunks(m["base"], ivg(m, template="w2 {prompt}"), prompts) == (Trunk((1, 2, 3), 2),)
    bf16 = {k: v.with_params(jax.tree.map(lambda a: a.astype(jnp.bfloat16), v.params)) for k, v in models.items()}
    assert _trunks(models["base"], ivg({**models, "tuned": bf16["tuned"]})) == (Trunk((0, 2, 3), 2),)


@pytest.mark.parametrize("token,chunk", [("implicit", "explicit"), ("explicit", "implicit"), ("none", "implicit"),
                                         ("implicit", "none")])
def test_results_are_bit_identical_to_running_every_model_in_full(models, token, chunk, monkeypatch):
    g = ivg_jax.Guidance(implicit=[ivg_jax.ImplicitGuide(models["tuned"], models["base"], 1.0)],
                         explicit=ivg_jax.ExplicitGuide(models["value"], 1.0), token=token, chunk=chunk)
    search = ivg_jax.Search(2, 2, 3) if chunk != "none" else ivg_jax.Search()
    assert _trunks(models["base"], g)
    shared = ivg_jax.generate(models["base"], PROMPTS, g, search, max_new_tokens=9, seed=[3, 4, 5])
    monkeypatch.setattr(engine, "shared_trunks", lambda *a: ())
    alone = ivg_jax.generate(models["base"], PROMPTS, g, search, max_new_tokens=9, seed=[3, 4, 5])
    np.testing.assert_array_equal(shared.tokens, alone.tokens)
    np.testing.assert_array_equal(shared.lengths, alone.lengths)
    for key in ("scores", "log_ratio", "kl"):
        np.testing.assert_array_equal(getattr(shared, key), getattr(alone, key), err_msg=key)


def test_blocks_with_their_own_windows_keep_them_when_the_trunk_is_shared(monkeypatch):
    """Per-block windows (a pattern whose top half differs from its bottom half) and Gemma-2's soft caps: the top
    blocks, run from the shared trunk's output, read their own rows of the per-block window table (not the rows
    counted from the trunk's end), so the results are those of running every model in full (12 positions
    against a window of 2)."""
    cfg = CFG.replace(family="gemma2", sliding_window=2, sliding_layers=(True, True, False, True), embed_scale=True,
                      norm_offset=True, sandwich_norms=True, attn_softcap=0.05, logit_softcap=5.0)
    base = init_model(cfg, seed=0)
    m = {"base": base, "tuned": retrained(base, 3, 1), "value": retrained(attach_head(base, "value", 0.1, 2), 2, 3)}
    g = ivg(m)
    assert _trunks(base, g) == (Trunk((0, 1, 2, 3), 2),)
    shared = ivg_jax.generate(base, PROMPTS, g, ivg_jax.Search(2, 2, 3), max_new_tokens=9, seed=[3, 4, 5])
    monkeypatch.setattr(engine, "shared_trunks", lambda *a: ())
    alone = ivg_jax.generate(base, PROMPTS, g, ivg_jax.Search(2, 2, 3), max_new_tokens=9, seed=[3, 4, 5])
    np.testing.assert_array_equal(shared.tokens, alone.tokens)
    np.testing.assert_array_equal(shared.scores, alone.scores)
    np.testing.assert_array_equal(shared.log_ratio, alone.log_ratio)


def test_a_guide_equal_to_its_reference_shares_every_block(models, monkeypatch):
    # The whole stack is shared; the members differ only in their heads (here: none at all).
    g = ivg_jax.Guidance(implicit=[ivg_jax.ImplicitGuide(models["base"], models["base"], 1.0)], token="implicit")
    assert _trunks(models["base"], g) == (Trunk((0, 1, 2), CFG.n_layers),)
    shared = ivg_jax.generate(models["base"], PROMPTS, g, max_new_tokens=6, seed=1)
    plain = ivg_jax.generate(models["base"], PROMPTS, None, max_new_tokens=6, seed=1)
    np.testing.assert_array_equal(shared.tokens, plain.tokens)  # log π − log π = 0: guidance changes nothing
    np.testing.assert_array_equal(shared.log_ratio, 0.0)


def test_the_shared_program_does_less_work(models, monkeypatch):
    g = ivg(models)
    calls = {}
    orig = engine.run

    def capture(program, params, inputs):
        calls[bool(program.trunks)] = (program, params, inputs)
        return orig(program, params, inputs)

    monkeypatch.setattr(engine, "run", capture)
    search = ivg_jax.Search(1, 2, 2)
    ivg_jax.generate(models["base"], PROMPTS[:1], g, search, max_new_tokens=2)
    monkeypatch.setattr(engine, "shared_trunks", lambda *a: ())
    ivg_jax.generate(models["base"], PROMPTS[:1], g, search, max_new_tokens=2)
    flops = {shared: token_step_cost(*args)["flops"] for shared, args in calls.items()}
    # 4 members x 4 blocks = 16 block passes per token alone; shared: 2 (the trunk, once) + 4 x 2 (each
    # member's top blocks) = 10. The heads, sampling and guidance are the same in both.
    assert flops[True] < 0.85 * flops[False], flops


def _word_tokenizer():
    from oracle import word_tokenizer

    return word_tokenizer(["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(CFG.vocab_size - 3)],
                          eos_only=True)


def _with_tokenizer(model, tok):
    import dataclasses

    return dataclasses.replace(model, tokenizer=tok)


def test_weights_are_compared_once_per_set_of_arrays(models, monkeypatch):
    from ivg_jax.decoding import trunks

    calls = []
    compare = trunks._equal_prefix
    monkeypatch.setattr(trunks, "_equal_prefix", lambda a, b: calls.append(1) or compare(a, b))
    monkeypatch.setattr(trunks, "_DEPTHS", type(trunks._DEPTHS)())
    fresh = retrained(models["base"], 1, 11)  # new arrays: compared, then remembered
    g = ivg_jax.Guidance(implicit=[ivg_jax.ImplicitGuide(fresh, models["base"], 1.0)], token="implicit")
    assert _trunks(models["base"], g) == (Trunk((0, 1, 2), 1),)
    first = len(calls)
    assert first == 1  # base vs fresh; the reference is the base itself (same arrays: no comparison)
    assert _trunks(models["base"], g) == (Trunk((0, 1, 2), 1),) and len(calls) == first
    changed = retrained(models["base"], 2, 12)  # other arrays, same shapes: compared anew
    g = ivg_jax.Guidance(implicit=[ivg_jax.ImplicitGuide(changed, models["base"], 1.0)], token="implicit")
    assert _trunks(models["base"], g) == (Trunk((0, 1, 2), 2),) and len(calls) == first + 1


def test_unrolled_layers_change_no_result(models):
    """`unroll_layers` runs each model's blocks one after another on per-layer weights (shared trunks, the top
    blocks branching off them, compaction levels and the separately compiled chunk of host-scored searches
    included): the search's results are those of the scan over the stacked blocks."""
    g = ivg(models)
    search = ivg_jax.Search(2, 2, 3)
    kw = dict(max_new_tokens=9, seed=[3, 4, 5], compaction=2)
    scanned = ivg_jax.generate(models["base"], PROMPTS, g, search, **kw)
    unrolled = ivg_jax.generate(models["base"], PROMPTS, g, search, unroll_layers=True, **kw)
    np.testing.assert_array_equal(unrolled.tokens, scanned.tokens)
    np.testing.assert_array_equal(unrolled.lengths, scanned.lengths)
    for key in ("scores", "log_ratio", "kl"):
        np.testing.assert_allclose(getattr(unrolled, key), getattr(scanned, key), atol=1e-5, err_msg=key)

    call = engine.plan(models["base"], PROMPTS, g, search, None, 9, unroll_layers=True)
    assert call.program.unroll_layers and call.program.trunks
    inputs, _, _ = engine.encode_inputs(call, PROMPTS, 3)
    params = engine.placed_params(call)
    states = []
    for program in (call.program, dataclasses.replace(call.program, unroll_layers=False)):
        states.append(engine.run_chunk(program, params, inputs, engine.init_state(program, params, inputs)))
    np.testing.assert_array_equal(states[0].tokens, states[1].tokens)
    np.testing.assert_allclose(states[0].value, states[1].value, atol=1e-5)


def test_per_layer_cache_holds_what_the_stacked_one_holds(models):
    """Blocks on per-layer weights keep one cache buffer per layer and write their new slots before reading
    (`Attention(write_at=)`): a prefill then a padded multi-token extend give the stacked path's outputs, and
    each buffer equals that layer of the stacked cache (slots, positions, next index)."""
    from ivg_jax.model.transformer import extend, prefill, unstack_blocks

    m = models["base"]
    ids = jnp.asarray([[0, 5, 6, 7], [8, 9, 10, 11]])
    mask = ids > 0
    more = jnp.asarray([[12, 13, 0], [14, 0, 0]])
    outs, caches = [], []
    for params in (m.params, unstack_blocks(m.params)):
        first, cache = prefill(m.graphdef, params, ids, mask, capacity=8)
        out, cache = extend(m.graphdef, params, more, more > 0, cache)
        outs.append((first, out))
        caches.append(cache)
    stacked, per_layer = caches
    assert isinstance(per_layer.k, tuple) and len(per_layer.k) == CFG.n_layers
    np.testing.assert_allclose(outs[1][0], outs[0][0], atol=1e-5)
    valid = np.asarray(more > 0)  # a padding slot's output attends to nothing and means nothing
    np.testing.assert_allclose(np.asarray(outs[1][1])[valid], np.asarray(outs[0][1])[valid], atol=1e-5)
    np.testing.assert_array_equal(per_layer.pos, stacked.pos)
    held = np.asarray(stacked.pos >= 0)  # [B, S] slots that hold a token (padding slots hold garbage)
    for mine, theirs in ((per_layer.k, stacked.k), (per_layer.v, stacked.v)):
        np.testing.assert_allclose(np.stack(mine).transpose(1, 3, 0, 2, 4)[held],
                                   np.asarray(theirs).transpose(1, 3, 0, 2, 4)[held], atol=1e-6)
    assert int(per_layer.index) == int(stacked.index) == 7


def test_models_held_per_layer_run_unrolled_without_a_copy(models):
    """Models loaded per layer (`Model.with_layout`, `load_model(per_layer=True)`) run their blocks one after
    another whatever `unroll_layers` says: the same trunks are found, the search gives the stacked models'
    results, and the compiled search holds no copy of their blocks — the
    per-call copy `unroll_layers=True` makes of stacked blocks is gone from XLA's temporaries."""
    g = ivg(models)
    held = {k: m.with_layout(per_layer=True) for k, m in models.items()}
    assert _trunks(held["base"], ivg(held)) == _trunks(models["base"], g) == (Trunk((0, 1, 2, 3), 2),)
    search = ivg_jax.Search(2, 2, 3)
    kw = dict(max_new_tokens=9, seed=[3, 4, 5])
    scanned = ivg_jax.generate(models["base"], PROMPTS, g, search, **kw)
    out = ivg_jax.generate(held["base"], PROMPTS, ivg(held), search, **kw)
    np.testing.assert_array_equal(out.tokens, scanned.tokens)
    np.testing.assert_allclose(out.scores, scanned.scores, atol=1e-5)

    def temp_bytes(base, guidance):
        call = engine.plan(base, PROMPTS, guidance, search, None, 9, unroll_layers=True)
        inputs, _, _ = engine.encode_inputs(call, PROMPTS, 3)
        compiled = engine.run.lower(call.program, engine.placed_params(call), inputs).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    # The blocks the search reads: the base's 4 (the trunk is 2 of them), the top 2 of tuned, reference, value.
    layer = sum(x.nbytes for x in jax.tree.leaves(models["base"].params["blocks"])) // CFG.n_layers
    assert temp_bytes(models["base"], g) - temp_bytes(held["base"], ivg(held)) >= (4 + 3 * 2) * layer


def test_a_cache_in_the_other_layout_is_refused(models):
    from ivg_jax.errors import InputError
    from ivg_jax.model.transformer import extend, prefill, unstack_blocks

    m = models["base"]
    ids = jnp.asarray([[5, 6, 7]])
    _, per_layer_cache = prefill(m.graphdef, unstack_blocks(m.params), ids, ids > 0, capacity=6)
    with pytest.raises(InputError, match="this cache is per-layer"):
        extend(m.graphdef, m.params, ids[:, :1], ids[:, :1] > 0, per_layer_cache)
