"""A frozen dataclass config <-> argparse: one flag per field (`learning_rate` -> `--learning-rate`), typed from
the annotations, defaults and help from the dataclass, so the config class stays the single source of truth."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def _base_type(annotation):
    """`int | None` -> (int, optional=True); `str` -> (str, False)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip=(), help_text: dict | None = None,
                        required=()) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind, optional = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        has_default = field.default is not dataclasses.MISSING
        default = field.default if has_default else None
        parse = _parse_bool if kind is bool else kind
        if optional:
            parse = (lambda p: lambda text: None if text.lower() == "none" else p(text))(parse)
        note = (help_text or {}).get(field.name, "")
        shown = f" (default: {default})" if has_default and default not in (None, "") else ""
        parser.add_argument(flag, dest=field.name, type=parse, default=default,
                            required=field.name in required or not has_default, help=f"{note}{shown}".strip(),
                            metavar=kind.__name__.upper())


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**(values | overrides))
