"""The compiled IVG engine against a cache-free re-implementation, brute-force scores, and its own corner cases."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import word_tokenizer
from reference_search import log_softmax, reference_search

import ivg_jax
from ivg_jax.config import ModelConfig
from ivg_jax.decoding import engine
from ivg_jax.decoding.engine import generate
from ivg_jax.decoding.plain import complete
from ivg_jax.decoding.sampling import Sampling
from ivg_jax.decoding.step_cost import token_step_cost
from ivg_jax.errors import InputError
from ivg_jax.guidance import ExplicitGuide, Guidance, ImplicitGuide, Search, best_of_n
from ivg_jax.runtime import CPU_MATMULS

CFG = ModelConfig(family="llama", vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ff=48, pad_token_id=0, eos_token_ids=(1,))
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
STOP = (1,)


def _scaled(model, factor):
    """Sharper output distributions, so guidance visibly moves samples in tiny random models."""
    params = jax.tree.map(lambda x: x, model.params)
    params["embed"] = params["embed"] * factor
    return model.with_params(params)


@pytest.fixture(scope="module")
def models():
    base = _scaled(ivg_jax.init_model(CFG, 0), 30.0)
    gpt2_cfg = ModelConfig(family="gpt2", vocab_size=61, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4,
                           head_dim=8, d_ff=64, norm="layer", mlp="gelu", activation="gelu_new", attn_bias=True,
                           attn_out_bias=True, mlp_bias=True, positions="learned", max_positions=64,
                           tie_embeddings=True, pad_token_id=0, eos_token_ids=(1,))
    return dict(
        base=base,
        tuned0=_scaled(ivg_jax.init_model(CFG, 1), 30.0), ref0=_scaled(ivg_jax.init_model(CFG, 2), 30.0),
        tuned1=_scaled(ivg_jax.init_model(gpt2_cfg, 3), 30.0), ref1=_scaled(ivg_jax.init_model(gpt2_cfg, 4), 30.0),
        value=_scaled(ivg_jax.init_model(CFG.replace(head="value"), 5), 30.0),
    )


def _guidance(models, token, chunk, weights=(1.0, -0.5), w_value=2.0):
    implicit = [ImplicitGuide(models["tuned0"], models["ref0"], weights[0]),
                ImplicitGuide(models["tuned1"], models["ref1"], weights[1])]
    return Guidance(implicit=implicit, explicit=ExplicitGuide(models["value"], w_value), token=token, chunk=chunk)


def _reference(models, prompt, token, chunk, search, max_new, sampling, key, weights=(1.0, -0.5), w_value=2.0):
    ids = {"base": prompt, "value": prompt, ("tuned", 0): prompt, ("ref", 0): prompt, ("tuned", 1): prompt,
           ("ref", 1): prompt}
    implicit = [(models["tuned0"], models["ref0"], weights[0]), (models["tuned1"], models["ref1"], weights[1])]
    return reference_search(models["base"], ids, implicit, (models["value"], w_value), token, chunk, search.beams,
                            search.candidates, search.chunk_length, max_new, sampling, key, STOP)


def _prompt_key(seed, i):
    return jax.random.fold_in(jax.random.key(seed), i)


def _assert_same(out, ref, p, width):
    rows = slice(p * width, (p + 1) * width)
    got_rows = out.rows["tokens"][rows]
    for r, (tokens, n) in enumerate(zip(got_rows, out.rows["lengths"][rows])):
        assert list(tokens[:n]) == ref["tokens"][r], f"prompt {p} row {r}"
    np.testing.assert_allclose(out.rows["scores"][rows], ref["scores"], rtol=1e-4, atol=1e-4)
    best = ref["best"]
    assert list(out.tokens[p][:out.lengths[p]]) == ref["tokens"][best]
    np.testing.assert_allclose(out.log_ratio[p][:out.lengths[p]], ref["log_ratio"][best], atol=2e-4)
    np.testing.assert_allclose(out.kl[p][:out.lengths[p]], ref["kl"][best], atol=2e-4)


@pytest.mark.parametrize("token", ["implicit", "explicit"])
@pytest.mark.parametrize("sampling", [Sampling(1.0), Sampling(0.7, top_k=20, top_p=0.9), Sampling(0.0)],
                         ids=["t1", "t0.7-k20-p0.9", "greedy"])
def test_token_level_equals_brute_force(models, token, sampling):
    """Sampling from the engine's guided distribution = sampling, with the same keys, from the product computed
    by separate full forwards of every model (two implicit guides with different weights, or the value model)."""
    search = Search(1, 1)
    out = generate(models["base"], PROMPTS, _guidance(models, token, "none"), search, sampling, max_new_tokens=8,
                   seed=3, stop_ids=STOP)
    for p, prompt in enumerate(PROMPTS):
        ref = _reference(models, prompt, token, "none", search, 8, sampling, _prompt_key(3, p))
        _assert_same(out, ref, p, 1)
    assert np.abs(out.log_ratio).max() > 0.05, "guidance did not move the base at all: the test would be blind"


@pytest.mark.parametrize("token,chunk", [("none", "implicit"), ("none", "explicit"), ("implicit", "explicit"),
                                         ("explicit", "implicit"), ("implicit", "implicit"),
                                         ("explicit", "explicit")])
def test_chunk_level_equals_cache_free_reference(models, token, chunk):
    search = Search(beams=2, candidates=3, chunk_length=3)
    sampling = Sampling(1.0)
    out = generate(models["base"], PROMPTS, _guidance(models, token, chunk), search, sampling, max_new_tokens=8,
                   seed=11, stop_ids=STOP)
    for p, prompt in enumerate(PROMPTS):
        ref = _reference(models, prompt, token, chunk, search, 8, sampling, _prompt_key(11, p))
        _assert_same(out, ref, p, 6)


def test_best_of_n_is_one_chunk_then_argmax(models):
    n = 5
    out = generate(models["base"], PROMPTS, _guidance(models, "none", "explicit"), best_of_n(n), Sampling(1.0),
                   max_new_tokens=6, seed=2, stop_ids=STOP)
    for p, prompt in enumerate(PROMPTS):
        # N independent plain samples (W=K=1 each would use slot 0; BoN uses slots 0..N-1 of one chunk)
        ref = _reference(models, prompt, "none", "explicit", Search(1, n, None), 6, Sampling(1.0), _prompt_key(2, p))
        _assert_same(out, ref, p, n)
        values = [ref["scores"][r] for r in range(n)]
        assert out.scores[p] == pytest.approx(max(values), abs=1e-5)


def test_w1_k1_equals_plain_guided_sampling(models):
    common = dict(sampling=Sampling(0.8), max_new_tokens=7, seed=5, stop_ids=STOP)
    plain = generate(models["base"], PROMPTS, _guidance(models, "implicit", "none"), Search(1, 1), **common)
    cbs = generate(models["base"], PROMPTS, _guidance(models, "implicit", "explicit"), Search(1, 1, 2), **common)
    np.testing.assert_array_equal(plain.tokens, cbs.tokens)


def test_forward_token_count_and_prompt_buckets(models):
    """Compute is counted in model forward tokens (prompts once per model, then active rows per step), and 3 or
    4 prompts share one compiled program (the prompt count is bucketed)."""
    guidance = _guidance(models, "implicit", "explicit")  # 1 base + 2x2 implicit + 1 value = 6 models
    kwargs = dict(search=Search(1, 1), sampling=Sampling(1.0), max_new_tokens=5, seed=1, stop_ids=[])
    out = generate(models["base"], PROMPTS, guidance, **kwargs)
    assert out.forward_tokens == 6 * (sum(map(len, PROMPTS)) + len(PROMPTS) * 5)
    np.testing.assert_array_equal(out.forward_tokens_per_prompt, [6 * (len(p) + 5) for p in PROMPTS])
    size = engine.run._cache_size()
    four = generate(models["base"], PROMPTS + [[20, 21]], guidance, **kwargs)
    assert engine.run._cache_size() == size
    np.testing.assert_array_equal(four.tokens[:3], out.tokens)


def test_zero_weights_equal_base_sampling(models):
    common = dict(sampling=Sampling(1.0), max_new_tokens=8, seed=9, stop_ids=STOP)
    unguided = generate(models["base"], PROMPTS, Guidance(), Search(1, 1), **common)
    zero = generate(models["base"], PROMPTS, _guidance(models, "implicit", "none", weights=(0.0, 0.0)),
                    Search(1, 1), **common)
    np.testing.assert_array_equal(unguided.tokens, zero.tokens)
    assert np.all(zero.kl == 0) and np.all(zero.log_ratio == 0)
    for p, prompt in enumerate(PROMPTS):
        ref = _reference(models, prompt, "none", "none", Search(1, 1), 8, Sampling(1.0), _prompt_key(9, p))
        assert list(unguided.tokens[p][:unguided.lengths[p]]) == ref["tokens"][0]


@pytest.mark.parametrize("chunk", ["implicit", "explicit"])
def test_incremental_scores_equal_scores_from_scratch(models, chunk):
    guidance = _guidance(models, "implicit", chunk)
    out = generate(models["base"], PROMPTS, guidance, Search(2, 2, 3), Sampling(1.0), max_new_tokens=9, seed=4,
                   stop_ids=STOP)
    width = 4
    for row, (tokens, n, dup) in enumerate(zip(out.rows["tokens"], out.rows["lengths"], out.rows["duplicate"])):
        if dup:
            continue
        prompt = PROMPTS[row // width]
        response = list(tokens[:n])
        full = np.array([prompt + response])
        if chunk == "implicit":
            expected = 0.0
            for g in guidance.implicit:
                lp_t = log_softmax(np.asarray(ivg_jax.forward(g.tuned, full))[0])
                lp_r = log_softmax(np.asarray(ivg_jax.forward(g.reference, full))[0])
                for j, y in enumerate(response):
                    pos = len(prompt) + j - 1
                    expected += g.weight * (lp_t[pos, y] - lp_r[pos, y])
        else:
            values = np.asarray(ivg_jax.forward(models["value"], full))[0]
            expected = values[len(prompt) + n - 2, response[-1]]
        assert out.rows["scores"][row] == pytest.approx(expected, abs=2e-4), row


def test_batch_invariance(models):
    guidance = _guidance(models, "implicit", "explicit")
    search = Search(2, 2, 3)
    seeds = [17, 23, 29]
    batch = generate(models["base"], PROMPTS, guidance, search, Sampling(1.0), max_new_tokens=8, seed=seeds,
                     stop_ids=STOP)
    for p in range(len(PROMPTS)):
        alone = generate(models["base"], [PROMPTS[p]], guidance, search, Sampling(1.0), max_new_tokens=8,
                         seed=[seeds[p]], stop_ids=STOP)
        np.testing.assert_array_equal(alone.tokens[0], batch.tokens[p])
        assert alone.scores[0] == pytest.approx(batch.scores[p], abs=1e-5)
        assert alone.forward_tokens_per_prompt[0] == batch.forward_tokens_per_prompt[p]


def test_weights_are_data_not_recompiles(models):
    guidance = _guidance(models, "implicit", "none")
    kwargs = dict(search=Search(1, 1), sampling=Sampling(1.0), max_new_tokens=6, seed=1, stop_ids=STOP)
    first = generate(models["base"], PROMPTS, guidance, **kwargs)
    size = engine.run._cache_size()
    other = generate(models["base"], PROMPTS, guidance, implicit_weights=[[2.0, 0.0], [0.0, 0.0], [1.0, 1.0]],
                     **kwargs)
    assert engine.run._cache_size() == size
    # per-row weights act per row: prompt 1 with zero weights equals unguided sampling
    unguided = generate(models["base"], PROMPTS, Guidance(), **kwargs)
    np.testing.assert_array_equal(other.tokens[1], unguided.tokens[1])
    assert not np.array_equal(first.tokens, other.tokens)


def test_another_cpu_matmul_library_compiles_the_search_without_ynnpack_and_changes_no_result(models):
    """`cpu_matmuls` reaches the compiler for this search only: XLA's default program hands its dots to YNNPACK
    fusions and the chosen library's has none; the search's tokens, choices and scores are the default's (up to
    float rounding)."""
    cpu_matmuls = "eigen"
    guidance = _guidance(models, "implicit", "explicit")
    kwargs = dict(search=Search(2, 2, 3), sampling=Sampling(1.0), max_new_tokens=6, seed=3, stop_ids=STOP)
    default = generate(models["base"], PROMPTS, guidance, **kwargs)
    other = generate(models["base"], PROMPTS, guidance, cpu_matmuls=cpu_matmuls, **kwargs)
    np.testing.assert_array_equal(other.tokens, default.tokens)
    np.testing.assert_allclose(other.scores, default.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(other.kl, default.kl, rtol=1e-4, atol=1e-5)

    call = engine.plan(models["base"], PROMPTS, guidance, Search(2, 2, 3), Sampling(1.0), 6, stop_ids=STOP)
    inputs, _, _ = engine.encode_inputs(call, PROMPTS, 3)
    params = engine.placed_params(call)
    compiled = {name: (engine.run if options is None else engine._run_with(name)).lower(
        call.program, params, inputs).compile().as_text() for name, options in CPU_MATMULS.items()}
    assert "ynn_fusion" in compiled["xla"] and "ynn_fusion" not in compiled[cpu_matmuls]
    # every offered choice is a program of its own: a library whose flag XLA ignores would compile another's
    bodies = {"\n".join(line for line in text.splitlines() if not line.startswith("HloModule"))
              for text in compiled.values()}
    assert len(bodies) == len(CPU_MATMULS)
    with pytest.raises(InputError, match="cpu_matmuls must be one of xla, eigen; got 'mkl'"):
        generate(models["base"], PROMPTS, guidance, cpu_matmuls="mkl", **kwargs)
    # "onednn" compiled this very program (its flag was inert): a name for a library the search did not use
    with pytest.raises(InputError, match="'onednn' is no longer offered: 'onednn' compiled the same program"):
        generate(models["base"], PROMPTS, guidance, cpu_matmuls="onednn", **kwargs)


def test_finished_rows_are_frozen_and_not_duplicated(models):
    """With EOS likely (stop on many ids), finished rows emit padding and each occupies one beam slot."""
    stop = tuple(range(1, 12))
    search = Search(2, 3, 2)
    out = generate(models["base"], PROMPTS, _guidance(models, "none", "explicit"), search, Sampling(1.0),
                   max_new_tokens=8, seed=0, stop_ids=stop)
    assert out.rows["done"].any() and out.rows["duplicate"].any() and not out.rows["done"].all()
    for p, prompt in enumerate(PROMPTS):
        ids = {"base": prompt, "value": prompt}
        ref = reference_search(models["base"], ids, [], (models["value"], 2.0), "none", "explicit", 2, 3, 2, 8,
                               Sampling(1.0), _prompt_key(0, p), stop)
        assert [bool(d) for d in out.rows["duplicate"][p * 6:(p + 1) * 6]] == ref["duplicate"]
        assert list(out.tokens[p][:out.lengths[p]]) == ref["tokens"][ref["best"]]
    for tokens, n in zip(out.rows["tokens"], out.rows["lengths"]):
        assert (tokens[n:] == 0).all()
    for p in range(len(PROMPTS)):
        rows = slice(p * 6, (p + 1) * 6)
        live = [tuple(t[:n]) for t, n, d in zip(out.rows["tokens"][rows], out.rows["lengths"][rows],
                                                out.rows["duplicate"][rows]) if not d]
        finished = [h for h, d in zip(live, out.rows["done"][rows]) if d]
        assert len(set(finished)) == len(finished)


_TEMP_OVER_STATE = """
import sys
import jax
import ivg_jax
from ivg_jax.config import ModelConfig
from ivg_jax.decoding import engine
from ivg_jax.decoding.sampling import Sampling
from ivg_jax.guidance import ExplicitGuide, Guidance, Search
from ivg_jax.model.cache import KVCache

if sys.argv[1] == "gather":
    KVCache.permute = KVCache.take
cfg = ModelConfig(family="llama", vocab_size=256, d_model=32, n_layers=8, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ff=48, max_positions=128, eos_token_ids=(1,), pad_token_id=0)
base, value = ivg_jax.init_model(cfg, 0), ivg_jax.init_model(cfg.replace(head="value"), 1)
prompts = [[5 + i, 6, 7] for i in range(16)]
call = engine.plan(base, prompts, Guidance(explicit=ExplicitGuide(value, 1.0), chunk="explicit"), Search(4, 4, 5),
                   Sampling(1.0), 60, stop_ids=(1,))
inputs, _, _ = engine.encode_inputs(call, prompts, 0)
params = engine.placed_params(call)
state = jax.eval_shape(lambda: engine.init_state(call.program, params, inputs))
state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
compiled = jax.jit(lambda p, i: engine.run.__wrapped__(call.program, p, i)).lower(params, inputs).compile()
print(compiled.memory_analysis().temp_size_in_bytes / state_bytes)
"""


def test_beam_reordering_needs_no_second_copy_of_the_caches():
    """XLA's buffer assignment for a chunk-level search at 256 rows: beyond its arguments and its output (the final
    state), the program needs a small fraction of the decode state, because selection permutes the caches one
    layer at a time in place; a whole-cache gather (the measure's sanity check) needs a second state's worth.
    Measured in a process with XLA's default compiler settings (what users get), not the suite's faster-compiling
    ones: with the elemental fusion emitter the gather variant's temp is only ~half a state."""
    import os
    import subprocess
    import sys

    from conftest import users_xla_flags

    flags = users_xla_flags()

    def temp_over_state(variant):
        proc = subprocess.run([sys.executable, "-c", _TEMP_OVER_STATE, variant], capture_output=True, text=True,
                              env={**os.environ, "XLA_FLAGS": flags}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return float(proc.stdout.split()[-1])

    assert temp_over_state("permute") < 0.25  # 8 layers: one layer's k and v, plus small per-row arrays
    assert temp_over_state("gather") > 0.9


def test_rows_read_one_copy_of_their_prompt(models):
    """A prompt's W·K rows read its keys and values from one per-prompt copy: the search's results are those of
    rows that each hold a copy (and the reference's, in the tests above), and the caches shrink from R·(T+N) slots
    to R·N + P·T."""
    rng = np.random.default_rng(1)
    prompts = [[int(t) for t in rng.integers(6, 61, size=n)] for n in (30, 12, 25, 30, 7, 18, 30, 2)]
    g = _guidance(models, "implicit", "explicit")
    call = engine.plan(models["base"], prompts, g, Search(2, 3, 2), Sampling(1.0), 6, stop_ids=STOP)
    copies = dataclasses.replace(call, program=dataclasses.replace(call.program, prompt_sharing=False))
    assert call.program.shares_prompts and not copies.program.shares_prompts
    inputs, _, _ = engine.encode_inputs(call, prompts, 7)
    params = engine.placed_params(call)

    def cache_slots(c):  # per member: the slots (rows or prompts x positions) its keys are held in
        state = jax.eval_shape(lambda: engine.init_state(c.program, params, inputs))
        slots = [sum(x.shape[1] * x.shape[3] for x in jax.tree.leaves(cache) if x.ndim == 5) // 2
                 for cache in state.caches]
        assert len(set(slots)) == 1
        return slots[0]

    n_rows, n_prompts, prompt_len, new = len(prompts) * 6, len(prompts), inputs.ids.base.shape[1], 6
    assert cache_slots(copies) == n_rows * (prompt_len + new)
    assert cache_slots(call) == n_rows * new + n_prompts * prompt_len
    shared_state, shared_best = engine.run(call.program, params, inputs)
    copied_state, copied_best = engine.run(copies.program, params, inputs)
    for key in ("tokens", "lengths", "done", "duplicate"):
        np.testing.assert_array_equal(getattr(shared_state, key), getattr(copied_state, key))
    for key in ("implicit_score", "value", "log_ratio", "kl"):
        np.testing.assert_allclose(getattr(shared_state, key), getattr(copied_state, key), atol=1e-5)
    np.testing.assert_array_equal(shared_best, copied_best)


def test_bfloat16_rows_read_their_shared_prompts():
    """bf16 attention of several prompts' rows reading one shared copy of each prompt runs (XLA:CPU once refused
    its dot: `DotThunk ... BF16 x BF16 = F32`, so bf16 searches over P > 1 prompts failed) and matches float32
    attention where every row holds its own copy of its prompt."""
    from flax import nnx

    from ivg_jax.model.layers import Attention, rope_inverse_frequencies

    n_prompts, rows, slots, own = 3, 4, 7, 2  # P, B/P, a prompt's slots, each row's own cached tokens
    b, h, k = n_prompts * rows, CFG.head_dim, CFG.n_kv_heads
    graphdef, state = nnx.split(Attention(CFG, jnp.float32, rngs=nnx.Rngs(0)))
    state = jax.tree.map(lambda a: a.astype(jnp.bfloat16).astype(jnp.float32), state)  # both read bf16 weights
    as_bf16 = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.bfloat16), state))
    as_f32 = nnx.merge(graphdef, state)
    rng = np.random.default_rng(0)

    def rand(*shape):  # values bf16 holds exactly, so both runs start from the same numbers
        return jnp.asarray(rng.normal(size=shape), jnp.bfloat16).astype(jnp.float32)

    x, prefix_k, prefix_v = rand(b, 1, CFG.d_model), rand(n_prompts, k, slots, h), rand(n_prompts, k, slots, h)
    cache_k, cache_v = rand(b, k, own, h), rand(b, k, own, h)
    prefix_pos = jnp.tile(jnp.arange(slots, dtype=jnp.int32), (n_prompts, 1))
    cache_pos = jnp.tile(jnp.arange(slots, slots + own, dtype=jnp.int32), (b, 1))
    positions = jnp.full((b, 1), slots + own, jnp.int32)
    inv_freq = jnp.asarray(rope_inverse_frequencies(CFG))
    bf = functools.partial(jax.tree.map, lambda a: a.astype(jnp.bfloat16))
    got, _, _ = jax.jit(lambda *a: as_bf16(*a))(
        *bf((x,)), positions, inv_freq, *bf((cache_k, cache_v)), cache_pos, (*bf((prefix_k, prefix_v)), prefix_pos))
    copies = [jnp.concatenate([jnp.repeat(p, rows, axis=0), c], axis=2) for p, c in
              ((prefix_k, cache_k), (prefix_v, cache_v))]
    want, _, _ = as_f32(x, positions, inv_freq, *copies,
                        jnp.concatenate([jnp.repeat(prefix_pos, rows, axis=0), cache_pos], axis=1))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.02 * float(jnp.abs(want).max()))


EARLY_STOP = tuple(range(1, 6))  # 5 of 61 ids end a row: rows stop at very different steps


@pytest.mark.parametrize("token,chunk,search", [("none", "explicit", best_of_n(3)),
                                                ("implicit", "explicit", Search(2, 3, 3))],
                         ids=["rows-leave-one-by-one", "prompts-leave-whole"])
def test_compaction_drops_finished_rows_and_changes_no_result(models, token, chunk, search):
    """Levels of halved batch (rows, or whole prompts when selections follow) give the uncompacted search's
    results — and the cache-free reference's — while the compiled program really runs the smaller batches."""
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(6, 61, size=n)] for n in (1, 3, 5, 2, 4, 1, 6, 3)]
    g = _guidance(models, token, chunk)
    common = dict(sampling=Sampling(1.0), max_new_tokens=12, seed=3, stop_ids=EARLY_STOP)
    full = generate(models["base"], prompts, g, search, **common)
    compact = generate(models["base"], prompts, g, search, compaction=2, **common)
    lengths = full.rows["lengths"]
    assert (lengths < 4).any() and (lengths == 12).any() and len(set(lengths.tolist())) > 4
    for key in ("tokens", "lengths", "done", "duplicate"):
        np.testing.assert_array_equal(compact.rows[key], full.rows[key])
    np.testing.assert_array_equal(compact.tokens, full.tokens)
    for key in ("scores", "log_ratio", "kl"):
        np.testing.assert_allclose(getattr(compact, key), getattr(full, key), atol=1e-5)
    np.testing.assert_array_equal(compact.forward_tokens_per_prompt, full.forward_tokens_per_prompt)
    width = search.rows_per_prompt
    for p, prompt in enumerate(prompts):
        ids = {"base": prompt, "value": prompt, ("tuned", 0): prompt, ("ref", 0): prompt, ("tuned", 1): prompt,
               ("ref", 1): prompt}
        implicit = [(models["tuned0"], models["ref0"], 1.0), (models["tuned1"], models["ref1"], -0.5)]
        ref = reference_search(models["base"], ids, implicit, (models["value"], 2.0), token, chunk, search.beams,
                               search.candidates, search.chunk_length, 12, Sampling(1.0), _prompt_key(3, p),
                               EARLY_STOP)
        _assert_same(compact, ref, p, width)

    def token_buffers(compaction):
        call = engine.plan(models["base"], prompts, g, search, Sampling(1.0), 12, stop_ids=EARLY_STOP,
                           compaction=compaction)
        inputs, _, _ = engine.encode_inputs(call, prompts, 3)
        text = engine.run.lower(call.program, engine.placed_params(call), inputs).as_text()
        return {rows for rows in range(1, len(prompts) * width) if f"tensor<{rows}x12xi32>" in text}

    assert token_buffers(0) == set()
    assert token_buffers(2) == {len(prompts) * width // 2 ** i for i in (1, 2)}  # halved units: R/2, R/4 rows


def test_bad_input_is_rejected_before_compiling(models):
    base = models["base"]
    g = _guidance(models, "implicit", "explicit")
    with pytest.raises(InputError, match="beams"):
        generate(base, PROMPTS, g, Search(0, 2, 3))
    with pytest.raises(InputError, match="chunk_length"):
        generate(base, PROMPTS, g, Search(2, 2, 0))
    with pytest.raises(InputError, match="need a chunk-level value"):
        generate(base, PROMPTS, _guidance(models, "implicit", "none"), Search(2, 2, 3))
    with pytest.raises(InputError, match="must be finite"):
        generate(base, PROMPTS, _guidance(models, "implicit", "none", weights=(float("nan"), 1.0)))
    with pytest.raises(InputError, match="no '\\{prompt\\}' field"):
        generate(base, PROMPTS, Guidance(base_template="Review:"))
    with pytest.raises(InputError, match="exceed the context"):
        generate(base, [[3] * 40], g, Search(1, 1), max_new_tokens=2000)
    with pytest.raises(InputError, match="value model"):
        generate(base, PROMPTS, Guidance(explicit=ExplicitGuide(models["tuned0"]), token="explicit"))
    for bad_id in (61, -1):  # the embedding lookup would clamp them into other tokens
        with pytest.raises(InputError, match=f"prompt 1 holds token id {bad_id}, outside"):
            generate(base, [[5, 6], [7, bad_id]], g, Search(1, 1))
        with pytest.raises(InputError, match=f"prompt 1 holds token id {bad_id}, outside"):
            complete(base, [[5, 6], [7, bad_id]])
    with pytest.raises(InputError, match="prompt 0: every implicit guide weight is <= 0"):
        generate(base, PROMPTS, _guidance(models, "none", "implicit", weights=(0.0, -1.0)), Search(2, 2, 3))
    with pytest.raises(InputError, match="prompt 1: every implicit guide weight is <= 0"):
        generate(base, PROMPTS, _guidance(models, "none", "implicit"), Search(2, 2, 3),
                 implicit_weights=[[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    with pytest.raises(InputError, match="stop strings must be non-empty"):
        generate(base, PROMPTS, g, Search(1, 1), stop_strings=[""])
    for bad_id in (61, -1):  # a stop id the model can never sample: its rows would silently run to the budget
        with pytest.raises(InputError, match=f"stop id {bad_id} is outside the model's vocabulary \\[0, 61\\)"):
            generate(base, PROMPTS, g, Search(1, 1), stop_ids=[3, bad_id])
        with pytest.raises(InputError, match=f"stop id {bad_id} is outside"):
            complete(base, PROMPTS, stop_ids=[bad_id])
    for bad in ("</s>", [3, "4"], [True]):
        with pytest.raises(InputError, match="stop_ids must be a list of token ids"):
            generate(base, PROMPTS, g, Search(1, 1), stop_ids=bad)
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="compaction must be an int >= 0"):
            generate(base, PROMPTS, g, Search(1, 1), compaction=bad)
    other_vocab = ivg_jax.init_model(CFG.replace(vocab_size=67), 8)
    with pytest.raises(InputError, match="does not share the base's vocabulary"):
        generate(base, PROMPTS, Guidance(implicit=[ImplicitGuide(other_vocab, other_vocab)], token="implicit"))


def test_same_size_different_vocabulary_is_refused_at_token_level(models):
    """Vocabularies are compared entry by entry: equal sizes with a different token->id map are refused."""
    words = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(3, 61)]
    shuffled = words[:3] + words[3:][::-1]
    base = dataclasses.replace(models["base"], tokenizer=word_tokenizer(words))
    guide = dataclasses.replace(models["tuned0"], tokenizer=word_tokenizer(shuffled))
    same = dataclasses.replace(models["ref0"], tokenizer=word_tokenizer(words))
    assert base.config.vocab_size == guide.config.vocab_size
    with pytest.raises(InputError, match="does not share the base's vocabulary"):
        generate(base, ["w5 w6"], Guidance(implicit=[ImplicitGuide(guide, guide)], token="implicit"))
    out = generate(base, ["w5 w6"], Guidance(implicit=[ImplicitGuide(same, same)], token="implicit"),
                   max_new_tokens=3)
    assert out.texts is not None and len(out.tokens[0]) == 3


@pytest.mark.parametrize("head", ["value", "tied", "untied_softcap", "int8_value"])
def test_head_at_reads_the_heads_columns(head):
    """`prefill(head=False)` then `head_at` equals the full head's output at the chosen columns."""
    from ivg_jax.model.transformer import head_at, prefill

    cfg = {"value": CFG.replace(head="value"), "int8_value": CFG.replace(head="value"),
           "tied": CFG.replace(tie_embeddings=True), "untied_softcap": CFG.replace(logit_softcap=3.0)}[head]
    model = ivg_jax.init_model(cfg, 7)
    if head == "int8_value":
        model = model.quantize()
    tokens = jnp.asarray([[5, 6, 7, 8], [0, 0, 9, 10]], jnp.int32)
    mask = tokens != 0
    ids = jnp.asarray([3, 60], jnp.int32)
    full, _ = prefill(model.graphdef, model.params, tokens, mask, capacity=4, last_only=True)
    hidden, _ = prefill(model.graphdef, model.params, tokens, mask, capacity=4, last_only=True, head=False)
    assert full.shape == (2, cfg.vocab_size) and hidden.shape == (2, cfg.d_model)
    got = head_at(model.graphdef, model.params, hidden, ids)
    np.testing.assert_allclose(got, np.asarray(full)[np.arange(2), np.asarray(ids)], rtol=1e-5, atol=1e-6)


def test_chunk_values_skip_the_value_models_vocab_projection(models):
    """A value model read only at sampled tokens (chunk-level explicit) runs without its [R, V] projection: the
    same tokens and scores as with it, and the compiled token step's FLOPs fall by that projection's 2·D·V per
    row — counted by XLA."""
    g = Guidance(implicit=[ImplicitGuide(models["tuned0"], models["ref0"], 1.0)],
                 explicit=ExplicitGuide(models["value"], 2.0), token="implicit", chunk="explicit")
    call = engine.plan(models["base"], PROMPTS, g, Search(2, 2, 3), Sampling(1.0), 6, stop_ids=STOP)
    projected = dataclasses.replace(call.program, value_columns=False)
    assert call.program.values_at_tokens and not projected.values_at_tokens
    inputs, _, _ = engine.encode_inputs(call, PROMPTS, 2)
    params = engine.placed_params(call)
    (state, best), (state_p, best_p) = (engine.run(p, params, inputs) for p in (call.program, projected))
    np.testing.assert_array_equal(state.tokens, state_p.tokens)
    np.testing.assert_array_equal(best, best_p)
    np.testing.assert_allclose(state.value, state_p.value, rtol=1e-5, atol=1e-6)

    # what the step reads instead, one column per row (D multiply-adds), is negligible next to the projection
    expected = 2 * CFG.d_model * CFG.vocab_size * call.program.width * inputs.seeds.shape[0]
    saved = (token_step_cost(projected, params, inputs)["flops"]
             - token_step_cost(call.program, params, inputs)["flops"])
    assert abs(saved - expected) < 0.05 * expected, (saved, expected)


def test_a_search_too_large_for_free_memory_is_refused_before_it_runs(models, monkeypatch):
    """The decode state is sized from shapes before anything runs: its size equals the real state's bytes, and a
    search whose state exceeds the free memory is one line (InputError) instead of an OOM kill after compiling."""
    g = _guidance(models, "implicit", "explicit")
    call = engine.plan(models["base"], PROMPTS, g, Search(2, 2, 3), Sampling(1.0), 6, stop_ids=STOP)
    inputs, _, _ = engine.encode_inputs(call, PROMPTS, 0)
    params = engine.placed_params(call)
    state = engine.init_state(call.program, params, inputs)
    need = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert engine._state_bytes(call.program, params, inputs) == need

    def no_run(*args):
        raise AssertionError("the search ran")

    monkeypatch.setattr(engine, "run", no_run)
    monkeypatch.setattr(engine, "free_memory_bytes", lambda devices: need - 1)
    with pytest.raises(InputError, match=r"needs at least .* for its decode state .* is free; decode fewer prompts"):
        generate(models["base"], PROMPTS, g, Search(2, 2, 3), max_new_tokens=6, stop_ids=STOP)
    monkeypatch.undo()
    monkeypatch.setattr(engine, "free_memory_bytes", lambda devices: need)
    generate(models["base"], PROMPTS, g, Search(2, 2, 3), max_new_tokens=6, stop_ids=STOP)  # fits: runs


def _bfloat16(model):
    return model.with_params(jax.tree.map(lambda a: a.astype(jnp.bfloat16), model.params))


def test_a_one_row_bfloat16_search_holds_no_float32_copy_of_its_weights(models, monkeypatch):
    """XLA:CPU multiplies a one-row bf16 dot in float32 on a float32 copy of the weight and hoists that copy out of
    the token loop: a one-row program (one prompt, W·K = 1) would hold every weight twice. Its dots with 16-bit
    weights run as two rows instead, one kept (`one_row_as_two`): the same tokens as with that copy."""
    from ivg_jax.model import quant

    base = _bfloat16(models["base"]).with_layout(per_layer=True)
    kwargs = dict(sampling=Sampling(1.0), max_new_tokens=6, stop_ids=STOP)
    f32_weights = sum(a.size * 4 for a in jax.tree.leaves(base.params))

    def one_row():
        jax.clear_caches()  # the model functions trace again with whatever one_row_as_two is now
        call = engine.plan(base, PROMPTS[:1], Guidance(), **kwargs)
        assert call.program.width * call.n_prompts == 1
        inputs, _, _ = engine.encode_inputs(call, PROMPTS[:1], 3)
        temp = engine.run.lower(call.program, engine.placed_params(call), inputs).compile().memory_analysis() \
            .temp_size_in_bytes
        plain = complete(base, PROMPTS[:1], 6, Sampling(1.0), seed=3, stop_ids=STOP).tokens
        return generate(base, PROMPTS[:1], Guidance(), seed=3, **kwargs).tokens, plain, temp

    as_two = one_row()
    monkeypatch.setattr(quant, "one_row_as_two", lambda dot, x: dot(x))
    as_one = one_row()
    np.testing.assert_array_equal(as_two[0], as_one[0])
    np.testing.assert_array_equal(as_two[1], as_one[1])
    assert as_one[2] > 0.5 * f32_weights  # the float32 copy a one-row bf16 dot makes
    assert as_two[2] < 0.25 * f32_weights


def test_bfloat16_blocks_and_caches_are_scanned_as_bits_for_decoding_without_a_float32_copy(models, monkeypatch):
    """XLA:CPU converts a bf16 weight stack that a loop slices dynamically to float32 — hoisted out of the decode
    loop, a float32 copy of every block per call — and each slice back; a stacked bf16 KV cache it converts to
    float32 and back at every token's write. Decoding scans the stack as uint16 bits and holds the cache as its
    bits instead (`ivg_jax.model.bits`): the same numbers bit for bit, without those copies."""
    from ivg_jax.decoding.plain import _sample_loop
    from ivg_jax.model import cache as cache_module
    from ivg_jax.model import transformer

    base = _bfloat16(models["base"])
    cfg = base.config
    ids = jnp.asarray([[5, 6, 7, 8], [9, 10, 11, 12]], jnp.int32)
    mask = jnp.ones_like(ids, bool)
    sample_args = (base.graphdef, base.params, ids, mask, jax.random.split(jax.random.key(0), 2),
                   jnp.asarray(STOP), jnp.int32(0), 8, Sampling(1.0))
    float32_cache = f"f32[{cfg.n_layers},2,{cfg.n_kv_heads},12,{cfg.head_dim}]"  # 4 prompt + 8 new slots

    def decode():
        jax.clear_caches()  # the jitted model functions trace again with whatever as_bits is now
        logits, cache = transformer.prefill(base.graphdef, base.params, ids, mask, capacity=8)
        step, _ = transformer.step(base.graphdef, base.params, jnp.asarray([13, 14]), cache)
        compiled = _sample_loop.lower(*sample_args).compile()
        tokens = _sample_loop(*sample_args)[0]
        return (np.asarray(logits, np.float32), np.asarray(step, np.float32), np.asarray(tokens),
                compiled.memory_analysis().temp_size_in_bytes, compiled.as_text().count(float32_cache))

    as_bits = decode()
    monkeypatch.setattr(transformer, "as_bits", lambda a: a)
    monkeypatch.setattr(transformer, "from_bits", lambda a, dtype: a)
    monkeypatch.setattr(cache_module, "cpu_16bit", lambda dtype: False)
    as_floats = decode()
    for mine, theirs in zip(as_bits[:3], as_floats[:3]):
        np.testing.assert_array_equal(mine, theirs)
    block_weights = sum(a.size for a in jax.tree.leaves(base.params["blocks"]))
    assert as_floats[3] - as_bits[3] > 1.5 * block_weights  # float32 copy (4 bytes each) against bits (2)
    assert as_bits[4] == 0 < as_floats[4]  # the cache is never converted to float32
