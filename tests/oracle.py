"""Tiny random transformers (PyTorch) models saved to disk: the independent oracle of the parity tests."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import transformers
from transformers.convert_slow_tokenizer import bytes_to_unicode

VOCAB = 97

# name -> (HF class names, config kwargs). Each covers an option the proof asks for.
FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB, bos_token_id=0,
                  eos_token_id=1)),
    "gpt2-untied": ("GPT2Config", "GPT2LMHeadModel",
                    dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=1)),
    "llama-gqa-tied": ("LlamaConfig", "LlamaForCausalLM",
                       dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=True)),
    "llama-mqa-bias": ("LlamaConfig", "LlamaForCausalLM",
                       dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=1, vocab_size=VOCAB, attention_bias=True, mlp_bias=True)),
    "llama3-rope-scaling": ("LlamaConfig", "LlamaForCausalLM",
                            dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=VOCAB, rope_theta=500000.0,
                                 rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8})),
    "mistral-window": ("MistralConfig", "MistralForCausalLM",
                       dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=VOCAB, sliding_window=4)),
    "mixtral-4experts": ("MixtralConfig", "MixtralForCausalLM",
                         dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=VOCAB, num_local_experts=4, num_experts_per_tok=2,
                              sliding_window=None)),
    "qwen2-bias-tied": ("Qwen2Config", "Qwen2ForCausalLM",
                        dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen3-qk-norm": ("Qwen3Config", "Qwen3ForCausalLM",
                      dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=VOCAB, tie_word_embeddings=False)),
    "gemma-geglu": ("GemmaConfig", "GemmaForCausalLM",
                    dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=8, vocab_size=VOCAB)),
    "gemma2-softcap-window": ("Gemma2Config", "Gemma2ForCausalLM",
                              dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, vocab_size=VOCAB, sliding_window=4,
                                   # caps far below the real 50 and 30: random-init scores are ~1e-2
                                   query_pre_attn_scalar=4, attn_logit_softcapping=0.02,
                                   final_logit_softcapping=0.8)),
    "gemma3-local-global": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                            dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, vocab_size=VOCAB, sliding_window=4,
                                 sliding_window_pattern=2, rope_parameters={
                                     "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
                                 tie_word_embeddings=False)),
}


def random_model(config_cls: str, model_cls: str, kwargs: dict, seed: int = 0):
    """A random-init transformers model (eval, fp32) of the named classes."""
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs)).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so the test sees them.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def make_hf_model(name: str, directory, seed: int = 0):
    """Saves a random-init model of family `name` to `directory` and returns the torch model (eval, fp32)."""
    model = random_model(*FAMILIES[name], seed=seed)
    model.save_pretrained(directory)
    return model


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """Logits [T, V] of one unpadded sequence."""
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return out.logits[0].float().numpy()


def pad_batch(rows: list[list[int]], side: str, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, sl] = r
        mask[i, sl] = True
    return ids, mask


def random_rows(lengths, seed: int = 0, vocab: int = VOCAB) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, vocab, size=n).tolist() for n in lengths]


def word_tokenizer(words: list[str], eos_only: bool = False):
    """A transformers fast tokenizer over whitespace-separated words (id = index in `words`). `eos_only`: only
    words[1] is a special token, so every other id survives a decode/encode round trip."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[2]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if eos_only:
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=words[1])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=words[0], eos_token=words[1], unk_token=words[2])


@contextlib.contextmanager
def small_tmpfs(path, size: str):
    """A tmpfs of `size` mounted at `path` for disk-full tests (skips the test where mounting is not allowed)."""
    import subprocess

    import pytest

    path.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip() or made.returncode}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def ours_and_transformers(gguf_path):
    """(our model, transformers' fp32 model) read from the same GGUF file: the real-weights parity tests' pair."""
    import ivg_jax

    ours = ivg_jax.load_model(str(gguf_path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                           dtype=torch.float32).eval()
    return ours, hf


# llama.cpp's tensor names (its convert_hf_to_gguf.py), written out here rather than taken from the loader under test.
_GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
_GGUF_BLOCK_NAMES = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
                     "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
                     "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
                     "self_attn.v_proj.bias": "attn_v.bias", "self_attn.q_norm.weight": "attn_q_norm.weight",
                     "self_attn.k_norm.weight": "attn_k_norm.weight", "self_attn.o_proj.weight": "attn_output.weight",
                     "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
                     "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


# A byte-level BPE vocabulary small enough for tiny models: GPT-2's 256 byte symbols, three merges, an EOS.
GGUF_MERGES = ["Ġ t", "h e", "Ġt he"]
GGUF_TOKENS = [*bytes_to_unicode().values(), "Ġt", "he", "Ġthe", "<|endoftext|>"]


def write_gguf(model, path, arch: str) -> None:
    """Writes a transformers Llama / Qwen2 / Qwen3 model as llama.cpp's converter would (float32 tensors, its names
    and `{arch}.*` keys; llama's q/k rows permuted to its interleaved rotary layout, Qwen's as they are), with the
    byte-level tokenizer `GGUF_TOKENS` (the model's vocab_size must be its length)."""
    import gguf

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def permute(w, heads):  # llama.cpp's LlamaModel.permute
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(GGUF_TOKENS)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(GGUF_TOKENS) - 1) + [gguf.TokenType.CONTROL])
    writer.add_token_merges(GGUF_MERGES)
    writer.add_eos_token_id(len(GGUF_TOKENS) - 1)
    for name, w in model.state_dict().items():
        w = w.detach().float().numpy()
        if name.startswith("model.layers."):
            layer, rest = name[len("model.layers."):].split(".", 1)
            if arch == "llama" and rest == "self_attn.q_proj.weight":
                w = permute(w, cfg.num_attention_heads)
            elif arch == "llama" and rest == "self_attn.k_proj.weight":
                w = permute(w, cfg.num_key_value_heads)
            gguf_name = f"blk.{layer}.{_GGUF_BLOCK_NAMES[rest]}"
        elif name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        else:
            gguf_name = _GGUF_NAMES[name]
        writer.add_tensor(gguf_name, np.ascontiguousarray(w, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
