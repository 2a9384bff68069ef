"""Reading JSONL inputs with errors that name the file and line (one reader for every job that takes JSONL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ivg_jax.errors import InputError


def records(path: str | Path, what: str = "input file") -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a missing file, bad JSON or a non-object is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); each line must "
                                 "be one JSON object") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record
