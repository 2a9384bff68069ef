"""Fluency metric: each continuation's mean NLL under a model, given its templated prompt, against transformers'
PyTorch model scoring the same ids (left-padded batches, continuations of different lengths, an empty one)."""

import dataclasses

import numpy as np
import torch
from oracle import word_tokenizer

import ivg_jax
from ivg_jax.evaluation.metrics import continuation_nll

WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(40)]


def test_continuation_nll_equals_transformers(hf_checkpoint):
    from transformers import AutoModelForCausalLM

    path, _ = hf_checkpoint("llama-gqa-tied")
    model = ivg_jax.load_model(path)
    vocab = model.config.vocab_size
    tok = word_tokenizer([*WORDS, *[f"x{i}" for i in range(vocab - len(WORDS))]][:vocab])
    model = dataclasses.replace(model, tokenizer=tok)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = ["w3 w4", "w5", "w6 w7 w8 w9", "w10"]
    continuations = [[11, 12, 13], [14], [15, 16, 17, 18, 19, 20, 21, 22, 23], []]
    got = continuation_nll(model, prompts, continuations, template="w1 {prompt}", batch_size=3)
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        if not c:
            assert np.isnan(got[i])
            continue
        ids = tok(f"w1 {p}", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([ids + c])).logits[0].double(), -1).numpy()
        expected = -np.mean([logp[len(ids) - 1 + j, t] for j, t in enumerate(c)])
        assert abs(got[i] - expected) < 1e-4, (i, got[i], expected)
