"""Bad checkpoints and inputs fail with a specific message before any weight is read or anything compiles."""

import json
import shutil

import gguf
import numpy as np
import pytest
import safetensors.numpy

import ivg_jax
from ivg_jax.errors import CheckpointError, InputError, UnsupportedError
from ivg_jax.loading.safetensors_source import SafetensorsSource
from ivg_jax.model import prefill


@pytest.fixture
def llama_dir(hf_checkpoint, tmp_path):
    """A private copy of a valid checkpoint that each test may break."""
    src, _ = hf_checkpoint("llama-mqa-bias")
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def no_weight_reads(monkeypatch):
    """Fails the test if a tensor is read: the error must come from headers and config alone."""
    def forbidden(self, key):
        raise AssertionError(f"tensor {key} was read before the error")

    monkeypatch.setattr(SafetensorsSource, "get", forbidden)


def _rewrite_weights(directory, change):
    path = directory / "model.safetensors"
    tensors = safetensors.numpy.load_file(path)
    change(tensors)
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_names_key(llama_dir, no_weight_reads):
    _rewrite_weights(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        ivg_jax.load_model(llama_dir)


def test_truncated_file_is_detected(llama_dir, no_weight_reads):
    path = llama_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        ivg_jax.load_model(llama_dir)


def test_shape_mismatch_names_tensor_and_shapes(llama_dir, no_weight_reads):
    config = json.loads((llama_dir / "config.json").read_text())
    config["intermediate_size"] = 64
    (llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"gate_proj\.weight.*\[48, 32\].*\[64, 32\]"):
        ivg_jax.load_model(llama_dir)


def test_extra_layers_mean_wrong_config(llama_dir, no_weight_reads):
    config = json.loads((llama_dir / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not used"):
        ivg_jax.load_model(llama_dir)


def test_unsupported_architecture(llama_dir):
    config = json.loads((llama_dir / "config.json").read_text())
    config["model_type"] = "bert"
    (llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError, match=r"model_type='bert'.*gpt2, llama, mistral, mixtral"):
        ivg_jax.load_model(llama_dir)
    config["model_type"] = "gemma3"  # the image-text model: its text weights sit under another prefix
    (llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError, match=r"image-text.*gemma3_text"):
        ivg_jax.load_model(llama_dir)


def test_remote_code_is_never_executed(llama_dir, tmp_path):
    marker = tmp_path / "executed"
    (llama_dir / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((llama_dir / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError, match="evil"):
        ivg_jax.load_model(llama_dir)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickle_checkpoints_are_refused(llama_dir, name):
    (llama_dir / "model.safetensors").unlink()
    (llama_dir / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="(?s)pickle.*save_pretrained"):
        ivg_jax.load_model(llama_dir)
    with pytest.raises(CheckpointError, match="pickle"):
        ivg_jax.load_model(llama_dir / name)


def test_unknown_gguf_quantisation(tmp_path):
    path = tmp_path / "q8_1.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 40), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedError, match=r"token_embd\.weight \(Q8_1\)"):
        ivg_jax.load_model(path)


def test_missing_path():
    with pytest.raises(CheckpointError, match="no such file"):
        ivg_jax.load_model("/nonexistent/checkpoint")


def test_prompt_longer_than_cache(hf_checkpoint):
    model = ivg_jax.load_model(hf_checkpoint("llama-mqa-bias")[0])
    ids = np.ones((2, 12), np.int32)
    with pytest.raises(InputError, match="12 tokens long but the cache holds 8"):
        prefill(model.graphdef, model.params, ids, ids.astype(bool), capacity=8)


def test_forward_input_checks(hf_checkpoint):
    model = ivg_jax.load_model(hf_checkpoint("gpt2")[0])
    with pytest.raises(InputError, match="token ids must lie in"):
        ivg_jax.forward(model, [[1, 2, 500]])
    with pytest.raises(InputError, match="learned positions"):
        ivg_jax.forward(model, np.ones((1, 65), np.int32))
    with pytest.raises(InputError, match="attention_mask shape"):
        ivg_jax.forward(model, [[1, 2, 3]], [[1, 1]])


def test_unsupported_activation_named_at_config_time(hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint("gpt2")
    dst = tmp_path / "gpt2"
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["activation_function"] = "quick_gelu"
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError, match="activation 'quick_gelu'"):
        ivg_jax.load_model(dst)
    from ivg_jax.config import ACTIVATIONS
    from ivg_jax.model.layers import _ACTIVATIONS

    assert set(ACTIVATIONS) == set(_ACTIVATIONS), "config's list and the implementations disagree"
