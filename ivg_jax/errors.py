"""Errors raised on bad input, before any expensive work starts.

Every message says what was wrong, where (file, key, shape) and what to do about it.
"""


import math
import string


class IvgError(ValueError):
    """Base class of ivg-jax's user-facing errors."""


class CheckpointError(IvgError):
    """A checkpoint is missing, truncated, unsafe or does not match its config."""


class UnsupportedError(IvgError):
    """An architecture, quantisation or option that ivg-jax does not implement."""


class InputError(IvgError):
    """Bad call arguments: prompts, shapes, lengths."""


def user_error_line(e: BaseException) -> str | None:
    """The one line a command prints for a failure the user can fix (bad value, bad file, OS error), or None for
    a bug (which keeps its traceback)."""
    if isinstance(e, IvgError):
        return f"error: {e}"
    if isinstance(e, UnicodeDecodeError):
        return f"error: a file is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        return f"error: {e.strerror or e}{where}; check the path, its permissions and free disk space"
    return None


def require_positive(config, names) -> None:
    """Refuses a config whose named integer options are below 1, naming the first such option."""
    for name in names:
        if getattr(config, name) < 1:
            raise InputError(f"{name} must be >= 1; got {getattr(config, name)}")


def require_count(value, name: str, meaning: str = "") -> None:
    """Refuses anything but an int >= 0 (bools and floats too: they would silently key another program)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{name} must be an int >= 0{f' ({meaning})' if meaning else ''}; got {value!r}")


def require_finite(config, names) -> None:
    """Refuses NaN or infinite float options (NaN slips through every `x <= 0` check), naming the first one.
    None means "off" and is allowed."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):
            raise InputError(f"{name} must be a finite number; got {value}")


DTYPE_NAMES = ("float32", "bfloat16")


def require_dtype(dtype: str, where: str = "dtype") -> None:
    if dtype not in DTYPE_NAMES:
        raise InputError(f"{where} must be one of {', '.join(DTYPE_NAMES)}; got {dtype!r}")


def check_template(template: str, where: str = "template") -> None:
    """A prompt template is filled with `str.format(prompt=...)`: it needs a `{prompt}` field and no other, and
    writes literal braces doubled. Checked when a config is made, so a bad one never waits for a model to load."""
    if not isinstance(template, str):
        raise InputError(f"{where} must be a string with a '{{prompt}}' field; got {template!r}")
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as e:  # a lone '{' or '}'
        raise InputError(f"{where} {template!r}: {e}; write a literal brace as '{{{{' or '}}}}'") from None
    others = sorted(fields - {"prompt"})
    if others:
        raise InputError(f"{where} {template!r} has fields {others}, but only {{prompt}} is filled; write literal "
                         "braces as '{{' and '}}'")
    if "prompt" not in fields:
        raise InputError(f"{where} {template!r} has no '{{prompt}}' field; write e.g. "
                         "'Here is a movie review: {prompt}'")
