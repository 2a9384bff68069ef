"""Training data: JSONL records -> token arrays with response-only loss masks -> deterministic, resumable batches.

Schemas (one JSON object per line; extra keys are ignored):

- preference pairs (DPO, reward models): `{"prompt": str, "chosen": str, "rejected": str}`
- scored responses (FUDGE value models):  `{"prompt": str, "response": str, "reward": number}`
- SFT text:                               `{"text": str}` (loss on every token) or `{"prompt": str, "response": str}`
  (loss on the response only)

Any record with a response may carry `"eos": false` when the response was cut off rather than finished; it then
gets no EOS token (a truncated sample must not teach the model to stop there). Prompts are formatted with the
model's template and tokenised exactly as the decoder does (the tokenizer's default special tokens, e.g. BOS for
Llama-2/Mistral: `ivg_jax.decoding.prompts.prompt_token_ids`), responses are tokenised on their own and
appended, so training sees the token boundary decoding produces.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ivg_jax import jsonl
from ivg_jax.decoding.prompts import prompt_token_ids
from ivg_jax.errors import InputError, check_template

KINDS = ("preference", "scored", "sft")
_FIELDS = {
    "preference": (("prompt", str), ("chosen", str), ("rejected", str)),
    "scored": (("prompt", str), ("response", str), ("reward", (int, float))),
}


def read_jsonl(path: str | Path, kind: str) -> list[dict]:
    """Every record of a JSONL file, checked against the `kind` schema; errors name the file, line and field."""
    if kind not in KINDS:
        raise InputError(f"data kind must be one of {KINDS}; got {kind!r}")
    records = []
    for lineno, record in jsonl.records(path, "data file"):
        record = check_record(record, kind, f"{path}:{lineno}")
        record["_line"] = lineno  # so tokenisation errors can name the line too
        records.append(record)
    if not records:
        raise InputError(f"{path} holds no records")
    return records


def check_record(record: dict, kind: str, where: str = "record") -> dict:
    fields = _FIELDS.get(kind)
    if kind == "sft":
        fields = (("text", str),) if "text" in record else (("prompt", str), ("response", str))
    for name, types in fields:
        if name not in record:
            raise InputError(f"{where}: missing field {name!r} (a {kind} record needs "
                             f"{', '.join(n for n, _ in fields)})")
        value = record[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise InputError(f"{where}: field {name!r} must be {_type_name(types)}, got {type(value).__name__}")
        if name in ("chosen", "rejected", "response", "text") and not value.strip():
            raise InputError(f"{where}: field {name!r} is empty; every example needs a non-empty response")
        if name == "reward" and not math.isfinite(value):
            raise InputError(f"{where}: field 'reward' is {value}; rewards must be finite numbers")
    if "eos" in record and not isinstance(record["eos"], bool):
        raise InputError(f"{where}: field 'eos' must be true or false, got {record['eos']!r}")
    return record


def _type_name(types) -> str:
    return "a string" if types is str else "a number"


@dataclasses.dataclass(frozen=True)
class Tokenization:
    """How one model sees an example: its prompt template, special tokens, EOS id and length limit."""

    template: str = "{prompt}"
    max_length: int = 256
    eos_id: int | None = None
    add_special_tokens: bool | None = None  # None: the tokenizer's default for prompts, as the decoder encodes them

    def __post_init__(self):
        check_template(self.template)
        if self.max_length < 2:
            raise InputError(f"max_length must be >= 2; got {self.max_length}")


def eos_of(model) -> int | None:
    ids = model.config.eos_token_ids
    if ids:
        return int(ids[0])
    return getattr(model.tokenizer, "eos_token_id", None)


def encode_pair(tokenizer, tok: Tokenization, prompt: str | None, response: str, eos: bool = True,
                where: str = "record", field: str = "response") -> tuple[np.ndarray, np.ndarray]:
    """-> (ids [T], loss mask [T]): the mask is True on response tokens (EOS included), which are the targets
    predicted from the position before them. `prompt=None` means plain text with the loss on every token but
    the first."""
    if prompt is None:
        ids = prompt_token_ids(tokenizer, response, tok.add_special_tokens)
        n_prompt = 1
    else:
        prompt_ids = prompt_token_ids(tokenizer, tok.template.format(prompt=prompt), tok.add_special_tokens)
        if not prompt_ids:
            raise InputError(f"{where}: the prompt is empty after tokenisation; a response needs a context")
        if len(prompt_ids) >= tok.max_length:
            raise InputError(f"{where}: the prompt is {len(prompt_ids)} tokens with its template, but max_length "
                             f"is {tok.max_length}; raise max_length or shorten the prompt")
        ids = prompt_ids + list(tokenizer(response, add_special_tokens=False)["input_ids"])
        n_prompt = len(prompt_ids)
    if eos:
        if tok.eos_id is None:
            raise InputError("the model has no EOS token id; mark responses with \"eos\": false or set eos_id")
        ids.append(tok.eos_id)
    if len(ids) <= n_prompt:
        raise InputError(f"{where}: field {field!r} is empty after tokenisation")
    if len(ids) > tok.max_length:
        raise InputError(f"{where}: prompt + {field} is {len(ids)} tokens but max_length is {tok.max_length}; "
                         "raise max_length or shorten the example")
    mask = np.zeros(len(ids), bool)
    mask[n_prompt:] = True
    return np.asarray(ids, np.int32), mask


@dataclasses.dataclass
class Example:
    """One training unit: one or two sequences (`ids`, `loss_mask`, each [T]) and an optional scalar target."""

    sequences: tuple[tuple[np.ndarray, np.ndarray], ...]
    reward: float = 0.0
    group: int = 0  # examples sharing a prompt share a group (pairwise accuracy of value models)
    ref_logprobs: tuple[float, ...] | None = None  # DPO: the reference's summed log-probs, when precomputed
    trunk: tuple[np.ndarray, ...] | None = None  # top-N training: the frozen blocks' output per sequence [T, D]

    @property
    def length(self) -> int:
        return max(len(ids) for ids, _ in self.sequences)


def tokenize(records: Sequence[dict], kind: str, tokenizer, tok: Tokenization, source: str = "data") -> list[Example]:
    """Records of one schema -> Examples (preference: (chosen, rejected); scored: (response,) + reward)."""
    out = []
    groups: dict[str, int] = {}
    for i, r in enumerate(records):
        group = groups.setdefault(r.get("prompt", r.get("text", "")), len(groups))
        where = f"{source}:{r['_line']}" if "_line" in r else f"{source} record {i + 1}"
        eos = r.get("eos", True)
        if kind == "preference":
            seqs = tuple(encode_pair(tokenizer, tok, r["prompt"], r[k], eos, where, k) for k in ("chosen", "rejected"))
            out.append(Example(seqs, group=group))
        elif kind == "scored":
            out.append(Example((encode_pair(tokenizer, tok, r["prompt"], r["response"], eos, where),),
                               float(r["reward"]), group))
        elif "text" in r:
            out.append(Example((encode_pair(tokenizer, tok, None, r["text"], eos, where, "text"),)))
        else:
            out.append(Example((encode_pair(tokenizer, tok, r["prompt"], r["response"], eos, where),)))
    return out


def load(path, kind: str, tokenizer, tok: Tokenization) -> list[Example]:
    return tokenize(read_jsonl(path, kind), kind, tokenizer, tok, source=str(path))


def collate(examples: Sequence[Example], pad_id: int = 0, multiple: int = 16) -> dict[str, np.ndarray]:
    """Right-padded arrays, the sequence axis rounded up to `multiple` (few distinct shapes -> few compiles).

    -> tokens, mask, loss_mask: [n_seq * batch, T] (pairs stacked chosen-first: rows [:B] chosen, [B:] rejected,
    so one forward serves both), window [n_seq * batch, W] (`response_window`), reward: [batch]; and
    trunk [n_seq * batch, T, D] / ref_logprobs [n_seq * batch] when every example carries them.
    """
    n_seq = len(examples[0].sequences)
    width = -(-max(e.length for e in examples) // multiple) * multiple
    rows = [e.sequences[s] for s in range(n_seq) for e in examples]
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    loss_mask = np.zeros((len(rows), width), bool)
    for i, (ids, lm) in enumerate(rows):
        tokens[i, :len(ids)] = ids
        mask[i, :len(ids)] = True
        loss_mask[i, :len(ids)] = lm
    batch = {"tokens": tokens, "mask": mask, "loss_mask": loss_mask,
             "reward": np.asarray([e.reward for e in examples], np.float32),
             "window": response_window(loss_mask, multiple=8)}
    carried = [e.trunk is not None for e in examples]
    if any(carried) and not all(carried):
        # The trainer attaches the trunk to every example a sitting reads; a batch without it would silently run
        # every block (a slower program, the same numbers), so a missed example is a bug to surface.
        raise ValueError(f"{carried.count(False)} of {len(examples)} examples in a batch lack the cached trunk")
    if all(carried):
        first = examples[0].trunk[0]
        trunk = np.zeros((len(rows), width, first.shape[-1]), first.dtype)
        for i, h in enumerate(e.trunk[s] for s in range(n_seq) for e in examples):
            trunk[i, :len(h)] = h
        batch["trunk"] = trunk
    if all(e.ref_logprobs is not None for e in examples):
        batch["ref_logprobs"] = np.asarray([e.ref_logprobs[s] for s in range(n_seq) for e in examples], np.float32)
    return batch


def response_window(loss_mask: np.ndarray, multiple: int = 8) -> np.ndarray:
    """[R, T] loss mask -> [R, W] the positions whose outputs predict a target: each row's last context token
    and its targets but the last (the target at t is predicted at t - 1), then padding, -1. W is the longest
    row's count rounded up to `multiple` (at most T). Losses read outputs there only (`window_view`)."""
    rows, width = loss_mask.shape
    first = np.where(loss_mask.any(1), np.argmax(loss_mask, 1), width)
    last = width - 1 - np.argmax(loss_mask[:, ::-1], 1)
    count = np.where(loss_mask.any(1), last - first + 1, 0)  # targets, hence outputs, per row
    w = min(width, max(1, -(-int(count.max()) // multiple) * multiple))
    window = (first - 1)[:, None] + np.arange(w)[None]
    return np.where(np.arange(w)[None] < count[:, None], window, -1).astype(np.int32)


@dataclasses.dataclass
class DataPosition:
    """Where the stream stands: the epoch (which fixes its shuffle) and the next batch within it."""

    epoch: int = 0
    batch: int = 0


class Batches:
    """An endless, deterministic stream of batches over `examples`.

    Each epoch's order is a function of (seed, epoch) only: examples are shuffled, cut into windows of
    `bucket_window` batches, sorted by length inside a window (similar lengths share a batch, so little padding),
    batched, and the batches shuffled again. The position (epoch, batch) is all a checkpoint needs to resume
    the stream exactly. The last partial batch of an epoch is dropped so every step has the same batch size.
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int = 0, bucket_window: int = 32,
                 pad_id: int = 0, multiple: int = 16):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1; got {batch_size}")
        if len(examples) < batch_size:
            raise InputError(f"{len(examples)} example{'s' * (len(examples) != 1)} cannot fill one batch of "
                             f"{batch_size}; lower batch_size or add data")
        self.examples, self.batch_size, self.seed = list(examples), batch_size, seed
        self.bucket_window, self.pad_id, self.multiple = bucket_window, pad_id, multiple
        self.position = DataPosition()
        self._order_epoch, self._order = -1, []

    @property
    def batches_per_epoch(self) -> int:
        return len(self.examples) // self.batch_size

    def epoch_order(self, epoch: int) -> list[list[int]]:
        """The batches (lists of example indices) of one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.examples))
        window = self.batch_size * self.bucket_window
        batches = []
        for start in range(0, self.batches_per_epoch * self.batch_size, window):
            chunk = order[start:min(start + window, self.batches_per_epoch * self.batch_size)]
            chunk = sorted(chunk, key=lambda i: (self.examples[i].length, i))
            batches += [list(chunk[j:j + self.batch_size]) for j in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, batch, indices = next(self._stream_from(self.position.epoch, self.position.batch))
        self.position.epoch, self.position.batch = epoch, batch + 1
        return collate([self.examples[i] for i in indices], self.pad_id, self.multiple)

    def upcoming(self, n_batches: int) -> list[int]:
        """Indices of the examples the next `n_batches` batches hold (sorted, each once), without advancing."""
        seen: set[int] = set()
        for _, _, indices in itertools.islice(self._stream_from(self.position.epoch, self.position.batch), n_batches):
            seen.update(indices)
            if len(seen) == len(self.examples):
                break
        return sorted(seen)

    def _stream_from(self, epoch: int, batch: int) -> Iterator[tuple[int, int, list[int]]]:
        """(epoch, batch, example indices) of every batch from position (epoch, batch) on, rolling over epochs;
        one epoch's order is kept, as consecutive batches mostly share it."""
        while True:
            if batch >= self.batches_per_epoch:
                epoch, batch = epoch + 1, 0
            if self._order_epoch != epoch:
                self._order_epoch, self._order = epoch, self.epoch_order(epoch)
            yield epoch, batch, self._order[batch]
            batch += 1

    def state(self) -> dict:
        return dataclasses.asdict(self.position)

    def restore(self, state: dict) -> None:
        self.position = DataPosition(int(state["epoch"]), int(state["batch"]))


def fixed_batches(examples: Sequence[Example], batch_size: int, pad_id: int = 0, multiple: int = 16):
    """Validation: every example once, in file order -> (batch, n_real). The last batch is filled up with
    copies of its first example so every batch has one shape; callers keep the first `n_real` results."""
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        n_real = len(chunk)
        chunk += [chunk[0]] * (batch_size - n_real)
        yield collate(chunk, pad_id, multiple), n_real
