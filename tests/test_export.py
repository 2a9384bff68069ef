"""Export to a HF directory: transformers loads it and computes the same outputs; we load it back identically."""

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import ALL_FAMILIES
from oracle import pad_batch, random_rows

import ivg_jax
from ivg_jax.config import ModelConfig

ROWS = random_rows([7, 3, 10], seed=5)


@pytest.mark.parametrize("name", ALL_FAMILIES)
def test_export_round_trip(hf_checkpoint, tmp_path, name):
    model = ivg_jax.load_model(hf_checkpoint(name)[0])
    out = ivg_jax.export_hf(model, tmp_path / "export")
    ids, mask = pad_batch(ROWS, "right")
    ours = np.asarray(ivg_jax.forward(model, ids, mask))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    for i, row in enumerate(ROWS):
        with torch.no_grad():
            reference = hf(torch.tensor([row])).logits[0].numpy()
        np.testing.assert_allclose(ours[i][mask[i]], reference, rtol=0, atol=1e-4 * np.abs(reference).max())
    again = ivg_jax.load_model(out)
    np.testing.assert_array_equal(np.asarray(ivg_jax.forward(again, ids, mask)), ours)


@pytest.mark.parametrize("name", ["gpt2", "mixtral-4experts", "gemma2-softcap-window"])
def test_per_layer_load_holds_the_stacked_weights_and_exports_them(hf_checkpoint, tmp_path, name):
    """`load_model(per_layer=True)` (fused GPT-2 q/k/v, MoE experts): each block's arrays are that
    layer of the stacked load, the forward is the same, and its export is the stacked model's export."""
    directory = hf_checkpoint(name)[0]
    stacked, mine = ivg_jax.load_model(directory), ivg_jax.load_model(directory, per_layer=True)
    assert mine.per_layer and not stacked.per_layer
    assert len(mine.params["blocks"]) == stacked.config.n_layers
    for i, layer in enumerate(mine.params["blocks"]):
        jax.tree.map(lambda a, b, i=i: np.testing.assert_array_equal(a, b[i]), layer, stacked.params["blocks"])
    ids, mask = pad_batch(ROWS, "left")
    np.testing.assert_allclose(np.asarray(ivg_jax.forward(mine, ids, mask))[mask],
                               np.asarray(ivg_jax.forward(stacked, ids, mask))[mask], atol=1e-5)
    again = ivg_jax.load_model(ivg_jax.export_hf(mine, tmp_path / "export"))
    jax.tree.map(np.testing.assert_array_equal, again.params, stacked.params)
    jax.tree.map(np.testing.assert_array_equal, mine.with_layout(per_layer=False).params, stacked.params)


def test_sharded_export_is_loaded_by_both(hf_checkpoint, tmp_path):
    model = ivg_jax.load_model(hf_checkpoint("llama-gqa-tied")[0])
    out = ivg_jax.export_hf(model, tmp_path / "sharded", max_shard_bytes=20_000)
    assert (out / "model.safetensors.index.json").exists() and len(list(out.glob("model-*.safetensors"))) > 2
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        reference = hf(torch.tensor([ROWS[0]])).logits[0].numpy()
    again = ivg_jax.load_model(out)
    np.testing.assert_allclose(np.asarray(ivg_jax.forward(again, [ROWS[0]]))[0], reference, atol=1e-5)


TINY = ModelConfig(family="llama", vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                   d_ff=48, pad_token_id=0, eos_token_ids=(1,))


def test_value_head_exports_as_causal_lm(tmp_path):
    """A value model is usable anywhere: transformers' 'logits' are its token values S_t."""
    model = ivg_jax.init_model(TINY.replace(head="value"), seed=3)
    out = ivg_jax.export_hf(model, tmp_path / "value")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        reference = hf(torch.tensor([ROWS[2]])).logits[0].numpy()
    values = np.asarray(ivg_jax.forward(model, [ROWS[2]]))[0]
    np.testing.assert_allclose(values, reference, atol=1e-5)
    assert ivg_jax.load_model(out).config.head == "value"


def test_scalar_head_exports_as_sequence_classifier(tmp_path):
    model = ivg_jax.init_model(TINY.replace(head="scalar"), seed=4)
    out = ivg_jax.export_hf(model, tmp_path / "scalar")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        reference = hf(torch.tensor([ROWS[0]])).logits[0, 0].item()
    scores = np.asarray(ivg_jax.forward(model, [ROWS[0]]))
    assert scores.shape == (1, len(ROWS[0]))
    np.testing.assert_allclose(scores[0, -1], reference, atol=1e-5)
    assert ivg_jax.load_model(out).config.head == "scalar"


def test_bfloat16_load_close_to_float32(hf_checkpoint):
    directory, _ = hf_checkpoint("mistral-window")
    f32 = ivg_jax.load_model(directory)
    bf16 = ivg_jax.load_model(directory, dtype="bfloat16")
    assert all(x.dtype == np.dtype("bfloat16") for x in __import__("jax").tree.leaves(bf16.params))
    ids, mask = pad_batch(ROWS, "left")
    a = np.asarray(ivg_jax.forward(f32, ids, mask))
    b = np.asarray(ivg_jax.forward(bf16, ids, mask))
    assert b.dtype == np.float32
    np.testing.assert_allclose(b[mask], a[mask], atol=0.05 * np.abs(a).max())


def test_bfloat16_export_round_trip(hf_checkpoint, tmp_path):
    bf16 = ivg_jax.load_model(hf_checkpoint("gpt2")[0], dtype="bfloat16")
    again = ivg_jax.load_model(ivg_jax.export_hf(bf16, tmp_path / "bf16"), dtype="bfloat16")
    ids, mask = pad_batch(ROWS, "left")
    np.testing.assert_array_equal(np.asarray(ivg_jax.forward(again, ids, mask)),
                                  np.asarray(ivg_jax.forward(bf16, ids, mask)))


def test_export_over_an_earlier_export_of_other_sharding_loads_the_new_weights(tmp_path):
    """A sharded export, then a single-file export of other weights into the same directory (and the reverse):
    the stale index / file is gone and both transformers and ivg-jax read the new weights."""
    first, second = ivg_jax.init_model(TINY, 0), ivg_jax.init_model(TINY, 1)
    ids = [[3, 4, 5, 6]]
    for case, (old_shard, new_shard) in enumerate(((4_000, 2 << 30), (2 << 30, 4_000))):
        out = tmp_path / f"export{case}"
        ivg_jax.export_hf(first, out, max_shard_bytes=old_shard)
        ivg_jax.export_hf(second, out, max_shard_bytes=new_shard)
        expected = np.asarray(ivg_jax.forward(second, ids))
        np.testing.assert_array_equal(np.asarray(ivg_jax.forward(ivg_jax.load_model(out), ids)), expected)
        hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            np.testing.assert_allclose(hf(torch.tensor(ids)).logits.numpy(), expected, atol=1e-5)
        sharded = new_shard == 4_000
        assert (out / "model.safetensors.index.json").exists() == sharded
        assert (out / "model.safetensors").exists() != sharded
        assert bool(list(out.glob("model-*-of-*.safetensors"))) == sharded


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_are_refused_on_load(tmp_path, bad):
    from safetensors.numpy import load_file, save_file

    out = ivg_jax.export_hf(ivg_jax.init_model(TINY, 0), tmp_path / "export")
    tensors = load_file(out / "model.safetensors")
    key = sorted(k for k in tensors if "mlp" in k)[0]
    tensors[key][0, 0] = bad
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    from ivg_jax.errors import CheckpointError

    with pytest.raises(CheckpointError, match=f"{key} holds 1 non-finite value"):
        ivg_jax.load_model(out)
