"""Reading text inputs (JSONL records, config and prompt files) with errors that name the file and line: one reader
for every job."""

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
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a leading BOM (Windows editors)
            except UnicodeDecodeError as e:
                raise _not_utf8(f"{path}:{lineno}", e, e.start) from None
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


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file's contents; a file in another encoding is refused naming it and the line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a leading BOM (Windows editors) is not part of the text
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
        raise _not_utf8(f"{what} {path}:{lineno}", e, e.start - line_start) from None


def _not_utf8(where: str, e: UnicodeDecodeError, byte_in_line: int) -> InputError:
    return InputError(f"{where}: not UTF-8 text ({e.reason} at byte {byte_in_line} of the line); save the file as "
                      "UTF-8")
