"""A GGUF file's tokenizer as a transformers fast tokenizer, without torch.

transformers' own GGUF path (`AutoTokenizer.from_pretrained(..., gguf_file=...)`) reads the file with a reader
that imports torch, a test-only dependency here, so a fresh install could not load the embedded model. The
`gguf` package reads the fields instead (vocabulary, merges, token types, special ids, chat template) and
transformers' converter (`convert_gguf_tokenizer`, torch-free) builds the `tokenizers` backend from them, so the
result is the tokenizer transformers itself would build; `tests/test_gguf_tokenizer.py` checks that on SmolLM2.
"""

from __future__ import annotations

from pathlib import Path

from ivg_jax.errors import CheckpointError

# GGUF metadata key -> transformers' special-token argument (the ids are looked up in the vocabulary).
_SPECIAL_TOKEN_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


def read_tokenizer_metadata(path: Path) -> dict:
    """`general.architecture` and every `tokenizer.*` field of the file, decoded."""
    from ivg_jax.loading.gguf_source import open_gguf

    return {key: field.contents() for key, field in open_gguf(path).fields.items()
            if key.startswith("tokenizer.") or key == "general.architecture"}


def tokenizer_parts(metadata: dict, where: str) -> tuple[str, dict, dict]:
    """(architecture, tokenizer_dict, tokenizer_config) in the form transformers' converter takes.

    The renames are transformers' own table (`GGUF_TOKENIZER_MAPPING`); the BOS defaults follow
    transformers' `get_gguf_tokenizer`, which llama.cpp's behaviour motivates."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING

    if "tokenizer.ggml.tokens" not in metadata:
        raise CheckpointError(f"{where}: the GGUF file has no tokenizer (tokenizer.ggml.tokens); pass "
                              "tokenizer=False or load a checkpoint that ships one")
    grouped = {group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items()
                       if f"tokenizer.{key}" in metadata}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    kind = tokenizer_dict.get("tokenizer_type")
    if kind == "llama":  # sentencepiece files without the flag: llama.cpp adds BOS
        tokenizer_config.setdefault("add_bos_token", True)
    elif kind == "gemma4":  # its chat template writes <bos> itself
        tokenizer_config["add_bos_token"] = False
    tokens = tokenizer_dict["tokens"]
    for name, key in _SPECIAL_TOKEN_IDS.items():
        token_id = metadata.get(key)
        tokenizer_config[name] = tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None
    return metadata.get("general.architecture", ""), tokenizer_dict, tokenizer_config


def tokenizer_from_gguf(path: Path):
    """The fast tokenizer (`transformers.PreTrainedTokenizerFast`) a GGUF file describes."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    path = Path(path)
    architecture, tokenizer_dict, tokenizer_config = tokenizer_parts(read_tokenizer_metadata(path), str(path))
    try:
        backend, extra = convert_gguf_tokenizer(architecture, tokenizer_dict)
    except ValueError as e:  # a tokenizer model transformers cannot build
        raise CheckpointError(f"{path}: {e}") from e
    return PreTrainedTokenizerFast(tokenizer_object=backend, name_or_path=str(path.parent),
                                   **tokenizer_config, **extra)
