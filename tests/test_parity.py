"""Our logits equal transformers' for every family, padded either side, and cached decoding equals a full forward."""

import numpy as np
import pytest
from conftest import ALL_FAMILIES
from oracle import hf_logits, pad_batch, random_rows

import ivg_jax
from ivg_jax.model import extend, prefill, step
from ivg_jax.model.api import init_model
from ivg_jax.model.layers import rope_inverse_frequencies

LENGTHS = [9, 5, 1, 12]  # 12 > the Mistral window (4); 1 exercises a row that is almost all padding


def tolerance(reference: np.ndarray) -> float:
    return 1e-4 * float(np.abs(reference).max())


@pytest.mark.parametrize("name", ALL_FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_transformers(hf_checkpoint, name, side):
    directory, hf = hf_checkpoint(name)
    model = ivg_jax.load_model(directory)
    rows = random_rows(LENGTHS, seed=1)
    ids, mask = pad_batch(rows, side)
    logits = np.asarray(ivg_jax.forward(model, ids, mask))
    assert logits.dtype == np.float32 and logits.shape == (*ids.shape, model.config.vocab_size)
    for i, row in enumerate(rows):
        reference = hf_logits(hf, row)
        np.testing.assert_allclose(logits[i][mask[i]], reference, rtol=0, atol=tolerance(reference))


def test_rope_scaling_is_exercised(hf_checkpoint):
    """The Llama-3 case would not catch a missing rescale if the rule left these frequencies unchanged."""
    model = ivg_jax.load_model(hf_checkpoint("llama3-rope-scaling")[0])
    scaled = rope_inverse_frequencies(model.config)
    plain = rope_inverse_frequencies(model.config.replace(rope_scaling=None))
    assert model.config.rope_scaling.kind == "llama3"
    assert np.abs(scaled - plain).max() > 1e-3 * plain.max()


@pytest.mark.parametrize("name,options", [
    ("gemma2-softcap-window", dict(attn_softcap=None, logit_softcap=None, sliding_layers=None, query_scale=None,
                                   embed_scale=False, norm_offset=False)),
    ("gemma3-local-global", dict(local_rope_theta=None, rope_scaling=None, sliding_layers=None, query_scale=None))])
def test_gemma_options_are_exercised(hf_checkpoint, name, options):
    """The Gemma parity cases would not catch a dropped option: without any one of them (the window on every
    block instead of alternate ones, for `sliding_layers`) the logits miss transformers' by far more than the
    tolerance the parity tests allow."""
    directory, hf = hf_checkpoint(name)
    model = ivg_jax.load_model(directory)
    row = random_rows([12], seed=1)[0]
    reference = hf_logits(hf, row)
    for option, value in options.items():
        changed = init_model(model.config.replace(**{option: value})).with_params(model.params)
        miss = np.abs(np.asarray(ivg_jax.forward(changed, [row]))[0] - reference).max()
        assert miss > 10 * tolerance(reference), option


@pytest.mark.parametrize("model_type,config_class", [("gemma2", "Gemma2Config"), ("gemma3_text", "Gemma3TextConfig")])
def test_gemma_configs_without_optional_keys_read_as_transformers_reads_them(model_type, config_class):
    """A config.json that leaves out the soft caps, window, layer pattern, query scalar or rotary bases means
    transformers' defaults (50 / 30 caps and a 4096 window for Gemma-2, five local blocks per global one and a
    10k local base for Gemma-3)."""
    import transformers

    from ivg_jax.config import config_from_hf

    keys = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=7, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=97)
    hf = getattr(transformers, config_class)(**keys)
    ours = config_from_hf({"model_type": model_type, **keys})
    rope = hf.rope_parameters.get("full_attention", hf.rope_parameters)
    assert (ours.attn_softcap, ours.logit_softcap, ours.sliding_window, ours.rope_theta) == (
        hf.attn_logit_softcapping, hf.final_logit_softcapping, hf.sliding_window, rope["rope_theta"])
    assert ours.sliding_layers == tuple(kind == "sliding_attention" for kind in hf.layer_types)
    assert ours.query_scale == hf.query_pre_attn_scalar ** -0.5
    if model_type == "gemma3_text":
        assert ours.local_rope_theta == hf.rope_parameters["sliding_attention"]["rope_theta"]


@pytest.mark.parametrize("name,per_layer", [(name, False) for name in ALL_FAMILIES]
                         + [("gemma2-softcap-window", True)])  # blocks unrolled: each reads its window statically
@pytest.mark.parametrize("side", ["left", "right"])
def test_cached_decoding_equals_full_forward(hf_checkpoint, name, per_layer, side):
    """Prefill a padded prompt batch, then feed each row's continuation one token per step (and once as a
    multi-token extend): every step's logits equal one uncached forward over prompt + continuation."""
    model = ivg_jax.load_model(hf_checkpoint(name)[0], per_layer=per_layer)
    prompts = random_rows([6, 3, 8], seed=2)
    continuation = random_rows([7, 7, 7], seed=3)
    ids, mask = pad_batch(prompts, side)
    full_rows = [p + c for p, c in zip(prompts, continuation)]
    full_ids, full_mask = pad_batch(full_rows, "left")
    full = np.asarray(ivg_jax.forward(model, full_ids, full_mask))
    expected = full[:, -7:]  # left padding: the continuation is the last 7 columns of every row

    out, cache = prefill(model.graphdef, model.params, ids, mask, capacity=ids.shape[1] + 7)
    np.testing.assert_allclose(out[:, -1] if side == "left" else out[np.arange(3), mask.sum(1) - 1],
                               full[np.arange(3), [len(p) - 1 + (full_ids.shape[1] - len(f)) for p, f in
                                                   zip(prompts, full_rows)]], atol=tolerance(full))
    last, _ = prefill(model.graphdef, model.params, ids, mask, capacity=ids.shape[1] + 7, last_only=True)
    np.testing.assert_allclose(last, out[np.arange(3), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], 1)], atol=1e-6)
    steps = []
    for t in range(7):
        logits, cache = step(model.graphdef, model.params, np.array([c[t] for c in continuation]), cache)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.stack(steps, 1), expected, rtol=0, atol=tolerance(full))
    assert int(cache.index) == ids.shape[1] + 7

    _, cache = prefill(model.graphdef, model.params, ids, mask, capacity=ids.shape[1] + 7)
    chunk, _ = extend(model.graphdef, model.params, np.array(continuation), np.ones((3, 7), bool), cache)
    np.testing.assert_allclose(np.asarray(chunk), expected, rtol=0, atol=tolerance(full))


@pytest.mark.parametrize("name", ALL_FAMILIES)
def test_flops_per_token_equals_torch_flop_counter(hf_checkpoint, name):
    """`ModelConfig.flops_per_token` (the weak-to-strong compute measure) against torch's FLOP counter on a
    one-token forward of the same checkpoint (eager attention, whose matmuls the counter sees), less that token's
    attention over itself (2 matmuls per head)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    directory, hf = hf_checkpoint(name)
    config = ivg_jax.load_model(directory).config
    hf.set_attn_implementation("eager")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        hf(torch.tensor([[3]]))
    self_attention = config.n_layers * 2 * 2 * config.n_heads * config.head_dim
    counted = counter.get_total_flops()
    if config.is_moe:
        # The counter does not see transformers' fused expert kernels (only the router): add the chosen experts'
        # matmuls, sized from the checkpoint's own expert tensors.
        experts = [p for n, p in hf.named_parameters() if ".experts." in n]
        counted += 2 * sum(p.numel() for p in experts) // config.n_experts * config.experts_per_token
    assert config.flops_per_token == counted - self_attention
