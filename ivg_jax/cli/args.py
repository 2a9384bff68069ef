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
                        required=(), shown_defaults: dict | None = None) -> None:
    """One flag per dataclass field. `shown_defaults`: help text replacing a field's printed default (a preset
    that changes it)."""
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
        # A default made of or ending in whitespace (a stop string "\n\n") is shown quoted, not as a blank.
        printed = repr(default) if isinstance(default, str) and default != default.strip() else default
        shown = f" (default: {printed})" if has_default and default not in (None, "") else ""
        if shown_defaults and field.name in shown_defaults:
            shown = f" (default: {shown_defaults[field.name]})"
        # Required fields may also come from a config file, so argparse does not enforce them; the dataclass does.
        parser.add_argument(flag, dest=field.name, type=parse, default=default, required=field.name in required,
                            help=f"{note}{shown}".strip() if has_default else f"{note} (required)".strip(),
                            metavar=kind.__name__.upper())


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**(values | overrides))


def load_config_file(path: str, cls) -> dict:
    """A YAML or TOML file -> {field: value}, every key a field of `cls` and every value of its type."""
    from pathlib import Path

    from ivg_jax.errors import InputError
    from ivg_jax.jsonl import read_text

    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {p} does not exist")
    text = read_text(p, "config file")
    try:
        if p.suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            raise InputError(f"config file {p} must end in .yaml, .yml or .toml")
    except InputError:
        raise
    except Exception as e:  # the parsers' own errors carry the line
        raise InputError(f"config file {p} does not parse: {e}") from None
    if not isinstance(values, dict):
        raise InputError(f"config file {p} must hold a mapping of option: value")
    return check_values(values, cls, where=str(p))


def check_values(values: dict, cls, where: str) -> dict:
    """Refuses unknown keys and values of the wrong type, naming the key; ints are accepted for floats."""
    from ivg_jax.errors import InputError

    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in names:
            close = [n for n in names if n.split("_")[0] == name.split("_")[0]]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(f"{where}: unknown option {key!r}{hint} (options: {', '.join(names)})")
        kind, optional = _base_type(hints[name])
        if value is None and optional:
            out[name] = None
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise InputError(f"{where}: option {key!r} must be {kind.__name__}, got {type(value).__name__} "
                             f"({value!r})")
        out[name] = value
    return out


def given_flags(argv) -> set[str]:
    """Field names of the flags written on the command line (so only they override a config file)."""
    return {a.lstrip("-").split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def config_from(cls, args: argparse.Namespace, argv, config_file: str | None = None, base: dict | None = None,
                **fixed):
    """Dataclass defaults < `base` (a preset) < the config file < flags given on the command line < `fixed`."""
    values = dict(base or {})
    if config_file:
        values |= load_config_file(config_file, cls)
    given = given_flags(argv)
    names = {f.name for f in dataclasses.fields(cls)}
    values |= {k: v for k, v in vars(args).items() if k in given and k in names}
    for f in dataclasses.fields(cls):
        if f.name not in values and f.default is dataclasses.MISSING and f.name not in fixed:
            value = getattr(args, f.name, None)
            if value is not None:
                values[f.name] = value
    values |= fixed
    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in values]
    if missing:
        from ivg_jax.errors import InputError

        raise InputError(f"missing required option {missing[0]!r}: pass --{missing[0].replace('_', '-')} or set "
                         f"it in the --config file")
    return cls(**values)
