"""Int8 weight-only models: the rounding is the brute-force one, and an int8 model computes what transformers
computes with its dequantized weights (values x scale) — the quantized matmuls, embedding rows and tied head
are exact rewrites, so the only error left is the rounding itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from oracle import pad_batch, random_rows

import ivg_jax
from ivg_jax.errors import InputError
from ivg_jax.model.api import attach_head
from ivg_jax.model.quant import Int8Weight, is_quantized, quantize_int8

ROWS = random_rows([7, 3, 9], seed=5)


def test_rounding_is_symmetric_per_output_channel():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((6, 3, 5)) * np.array([1.0, 1e-3, 30.0])[None, :, None]).astype(np.float32)
    w[:, 2, 4] = 0.0  # an all-zero output channel
    q = quantize_int8(w, (0,))
    assert q.values.dtype == np.int8 and q.values.shape == w.shape and q.scale.shape == (1, 3, 5)
    amax = np.abs(w).max(axis=0, keepdims=True)
    expected_scale = np.where(amax > 0, amax * np.float32(1 / 127), 1).astype(np.float32)
    np.testing.assert_array_equal(q.scale, expected_scale)
    np.testing.assert_array_equal(q.values, np.clip(np.round(w * (1 / expected_scale)), -127, 127).astype(np.int8))
    assert np.all(np.abs(w - q.values * q.scale) <= q.scale / 2 * (1 + 1e-6))
    assert np.abs(q.values).max(axis=0)[:, :4].min() == 127 and not q.values[:, 2, 4].any()
    # the same rounding on device
    on_device = quantize_int8(jax.numpy.asarray(w), (0,))
    np.testing.assert_array_equal(np.asarray(on_device.values), q.values)
    np.testing.assert_array_equal(np.asarray(on_device.scale), q.scale)


def _dequantized(model):
    return model.with_params(jax.tree.map(lambda w: w.dequantize() if is_quantized(w) else w, model.params,
                                          is_leaf=is_quantized)).with_layout(per_layer=False)


@pytest.mark.parametrize("name", ["llama-gqa-tied", "gpt2-untied", "mixtral-4experts", "qwen3-qk-norm"])
def test_int8_model_equals_transformers_on_its_dequantized_weights(hf_checkpoint, name, tmp_path):
    directory, _ = hf_checkpoint(name)
    int8 = ivg_jax.load_model(directory, quantize="int8")
    kinds = {jax.tree_util.keystr(p): type(w).__name__
             for p, w in jax.tree_util.tree_flatten_with_path(int8.params, is_leaf=is_quantized)[0]}
    assert kinds["['blocks']['attn']['q']"] == "Int8Weight" and kinds["['embed']"] == "Int8Weight"
    assert kinds["['blocks']['attn_norm']['scale']"] != "Int8Weight"
    assert int8.quantized and int8.dtype == np.float32
    # the oracle: transformers' model holding the int8 weights' values x scale
    out = ivg_jax.export_hf(_dequantized(int8), tmp_path / "dq")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask = pad_batch(ROWS, "right")
    with torch.no_grad():
        reference = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    for model in (int8, ivg_jax.load_model(directory, quantize="int8", per_layer=True)):
        logits = np.asarray(ivg_jax.forward(model, ids, mask))
        np.testing.assert_allclose(logits[mask], reference[mask], atol=2e-5, rtol=1e-5)
    # quantizing a loaded model is the same as quantizing while loading
    again = ivg_jax.load_model(directory).quantize()
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(int8.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_int8_stays_close_to_float_and_bfloat16_keeps_its_dtype(hf_checkpoint):
    directory, _ = hf_checkpoint("llama3-rope-scaling")
    ids, mask = pad_batch(ROWS, "left")
    f32 = np.asarray(ivg_jax.forward(ivg_jax.load_model(directory), ids, mask))
    int8 = np.asarray(ivg_jax.forward(ivg_jax.load_model(directory, quantize="int8"), ids, mask))
    assert np.abs(int8 - f32)[mask].max() < 0.02 * np.abs(f32).max()
    bf16 = ivg_jax.load_model(directory, dtype="bfloat16", quantize="int8")
    assert bf16.dtype == np.dtype("bfloat16") and bf16.params["embed"].scale.dtype == np.dtype("bfloat16")
    out = np.asarray(ivg_jax.forward(bf16, ids, mask))
    assert out.dtype == np.float32 and np.abs(out - f32)[mask].max() < 0.05 * np.abs(f32).max()


def test_guided_search_on_int8_models_equals_it_on_their_dequantized_weights():
    cfg = ivg_jax.ModelConfig(family="llama", vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                              head_dim=8, d_ff=48, pad_token_id=0, eos_token_ids=(1,))
    base = ivg_jax.init_model(cfg, seed=0).quantize()
    tuned = ivg_jax.init_model(cfg, seed=1).quantize()
    value = attach_head(ivg_jax.init_model(cfg, seed=2), "value", scale=0.1).quantize()

    def search(b, t, v):
        guidance = ivg_jax.Guidance(implicit=[ivg_jax.ImplicitGuide(t, b, 1.0)], explicit=ivg_jax.ExplicitGuide(v),
                                    token="implicit", chunk="explicit")
        return ivg_jax.generate(b, [[5, 6, 7], [8, 9]], guidance, ivg_jax.Search(2, 2, 3), max_new_tokens=7, seed=3)

    got = search(base, tuned, value)
    want = search(*map(_dequantized, (base, tuned, value)))
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-5)


def test_int8_weights_are_refused_where_float_ones_are_needed(hf_checkpoint, tmp_path):
    directory, _ = hf_checkpoint("llama-gqa-tied")
    int8 = ivg_jax.load_model(directory, quantize="int8")
    with pytest.raises(InputError, match="decode-only; export the float model"):
        ivg_jax.export_hf(int8, tmp_path / "out")
    from ivg_jax.training import TrainConfig, train
    with pytest.raises(InputError, match="decode-only; train the float model"):
        train(TrainConfig(objective="sft", train_data=str(tmp_path / "none.jsonl"), output_dir=str(tmp_path / "r")),
              model=int8)
    with pytest.raises(InputError, match="quantize must be one of"):
        ivg_jax.load_model(directory, quantize="int4")
    assert isinstance(int8.params["embed"], Int8Weight)


def test_a_bfloat16_table_read_in_a_loop_is_gathered_as_bits_without_a_float32_copy():
    """XLA:CPU gathers from a bf16 table that a loop reads by converting the whole table to float32 once per call;
    `take_rows` / `take_columns` gather its uint16 bits instead: the same values and gradients as `jnp.take`,
    without the float32 table."""
    from ivg_jax.model.quant import take_columns, take_rows

    table = jnp.asarray(np.random.default_rng(0).normal(size=(4096, 64)), jnp.bfloat16)
    ids = jnp.asarray([3, 7, 3, 4095])
    np.testing.assert_array_equal(take_rows(table, ids), jnp.take(table, ids, axis=0))
    np.testing.assert_array_equal(take_columns(table.T, ids), jnp.take(table.T, ids, axis=1).T.astype(jnp.float32))
    grads = [jax.grad(lambda t, f=f: (f(t, ids).astype(jnp.float32) ** 2).sum())(table)
             for f in (take_rows, lambda t, i: jnp.take(t, i, axis=0))]
    np.testing.assert_array_equal(grads[0], grads[1])

    def loop(gather):
        def read(table, ids):
            def body(t, total):
                return total + gather(table, (ids + t) % table.shape[0]).astype(jnp.float32).sum()
            return jax.lax.fori_loop(0, 4, body, jnp.float32(0))
        return jax.jit(read).lower(table, ids).compile().memory_analysis().temp_size_in_bytes

    f32_table = table.size * 4
    assert loop(lambda t, i: jnp.take(t, i, axis=0)) >= f32_table  # what XLA does with a plain gather
    assert loop(take_rows) < 0.6 * f32_table  # the bits: at most a 16-bit copy


@pytest.mark.parametrize("rows", [1, 16])
def test_a_bfloat16_tied_head_in_a_loop_reads_the_embedding_in_place(rows):
    """With x first, XLA:CPU makes a transposed copy of a bf16 embedding read as a tied head in a loop (YNNPACK
    takes a bf16 right operand as [in, out]) and, for one row, a float32 copy (a one-row bf16 dot runs in float32).
    `matmul_rows_f32` reads it in place: the embedding on the left, a lone row run as two. Values against a
    float64 product."""
    from ivg_jax.model.quant import matmul_rows_f32

    table = jnp.asarray(np.random.default_rng(0).normal(size=(4096, 64)), jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(rows, 1, 64)), jnp.bfloat16)
    exact = np.asarray(x, np.float64) @ np.asarray(table, np.float64).T
    np.testing.assert_allclose(matmul_rows_f32(x, table), exact, rtol=1e-5, atol=1e-4)

    def loop(head):
        def read(table, x):
            def body(t, carry):
                h, total = carry
                out = head(h, table)
                return h + (out[..., :64] * 1e-3).astype(h.dtype), total + out.sum()
            return jax.lax.fori_loop(0, 4, body, (x, jnp.float32(0)))[1]
        return jax.jit(read).lower(table, x).compile().memory_analysis().temp_size_in_bytes

    table_bytes = table.size * 2
    assert loop(lambda h, w: jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)) >= table_bytes
    assert loop(matmul_rows_f32) < 0.6 * table_bytes


def test_a_one_row_bfloat16_mixture_of_experts_runs_its_experts_as_two_rows(monkeypatch):
    """The MoE experts' einsums are one-row bf16 dots too when one row decodes: XLA:CPU would run them in float32 on
    a float32 copy of the block's experts. They run as two rows, one kept (`one_row_as_two`): the same logits as
    the row in a two-row batch, without that copy."""
    from ivg_jax.decoding.plain import _sample_loop
    from ivg_jax.decoding.sampling import Sampling
    from ivg_jax.model import layers, transformer

    cfg = ivg_jax.ModelConfig(family="mixtral", vocab_size=101, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                              head_dim=16, d_ff=256, norm="rms", mlp="moe", activation="silu", positions="rope",
                              max_positions=64, n_experts=8, experts_per_token=2, pad_token_id=0, eos_token_ids=(1,))
    model = ivg_jax.init_model(cfg, 0, dtype=jnp.bfloat16)
    ids = jnp.asarray([[5, 6, 7, 8], [5, 6, 7, 8]], jnp.int32)
    mask = jnp.ones_like(ids, bool)
    pair, pair_cache = transformer.prefill(model.graphdef, model.params, ids, mask, capacity=8)
    one, one_cache = transformer.prefill(model.graphdef, model.params, ids[:1], mask[:1], capacity=8)
    np.testing.assert_array_equal(np.asarray(one, np.float32), np.asarray(pair[:1], np.float32))
    pair_step = transformer.step(model.graphdef, model.params, jnp.asarray([9, 9]), pair_cache)[0]
    one_step = transformer.step(model.graphdef, model.params, jnp.asarray([9]), one_cache)[0]
    np.testing.assert_array_equal(np.asarray(one_step, np.float32), np.asarray(pair_step[:1], np.float32))

    def temp():
        jax.clear_caches()
        args = (model.graphdef, model.params, ids[:1], mask[:1], jax.random.split(jax.random.key(0), 1),
                jnp.asarray([1]), jnp.int32(0), 4, Sampling(1.0))
        return _sample_loop.lower(*args).compile().memory_analysis().temp_size_in_bytes

    as_two = temp()
    monkeypatch.setattr(layers, "one_row_as_two", lambda dot, x: dot(x))
    block_experts = sum(model.params["blocks"]["mlp"][name][0].size for name in ("gate", "up", "down"))
    # the layer scan converts the block's experts to float32 (4 bytes each) at every token instead of reading its
    # 16-bit slice (2)
    assert temp() - as_two > 1.5 * block_experts
