"""Errors raised on bad input, before any expensive work starts.

Every message says what was wrong, where (file, key, shape) and what to do about it.
"""


class IvgError(ValueError):
    """Base class of ivg-jax's user-facing errors."""


class CheckpointError(IvgError):
    """A checkpoint is missing, truncated, unsafe or does not match its config."""


class UnsupportedError(IvgError):
    """An architecture, quantisation or option that ivg-jax does not implement."""


class InputError(IvgError):
    """Bad call arguments: prompts, shapes, lengths."""


def require_positive(config, names) -> None:
    """Refuses a config whose named integer options are below 1, naming the first such option."""
    for name in names:
        if getattr(config, name) < 1:
            raise InputError(f"{name} must be >= 1; got {getattr(config, name)}")
