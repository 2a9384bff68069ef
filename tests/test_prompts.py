"""Prompt encoding follows each tokenizer's own default special tokens (BOS for Llama-2/Mistral-style tokenizers,
nothing for GPT-2-style ones), never doubles a BOS the template writes and never appends EOS to a prompt; the
decoder and the training data encode prompts the same way."""

import numpy as np
import pytest

from ivg_jax.decoding.prompts import encode, prompt_token_ids
from ivg_jax.training.data import Tokenization, encode_pair

WORDS = ["<pad>", "</s>", "<unk>", "<s>", "the", "movie", "was", "good", "[INST]"]


def _tokenizer(single: str | None):
    """A word-level fast tokenizer with a Llama-2-style post-processor (`single`, e.g. "<s> $A") or none."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if single:
        tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", 3), ("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.mark.parametrize("single, template, expected", [
    ("<s> $A", "{prompt}", [3, 4, 5, 6]),  # Llama-2 / Mistral: BOS, as transformers adds it
    ("<s> $A", "<s> [INST] {prompt}", [3, 8, 4, 5, 6]),  # the template writes BOS: not doubled
    ("<s> $A </s>", "{prompt}", [3, 4, 5, 6]),  # a tokenizer that would end the text: no EOS on a prompt
    (None, "{prompt}", [4, 5, 6]),  # GPT-2 / SmolLM2 style: nothing added
])
def test_prompts_get_the_tokenizers_default_specials(single, template, expected):
    tok = _tokenizer(single)
    text = template.format(prompt="the movie was")
    assert prompt_token_ids(tok, text) == expected
    assert prompt_token_ids(tok, text, add_special_tokens=False) == tok(text, add_special_tokens=False)["input_ids"]
    ids, mask = encode(tok, ["the movie was", "good"], template)
    assert ids[0][mask[0]].tolist() == expected
    assert ids[1][mask[1]].tolist() == prompt_token_ids(tok, template.format(prompt="good"))
    # Training encodes the same prompt ids, then the response alone (no BOS in the middle) and EOS.
    pair_ids, loss_mask = encode_pair(tok, Tokenization(template, max_length=32, eos_id=1), "the movie was", "good")
    assert pair_ids.tolist() == expected + [7, 1]
    np.testing.assert_array_equal(loss_mask, [False] * len(expected) + [True, True])
