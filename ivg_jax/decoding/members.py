"""The models of one decode program, by role.

A program runs the base, G implicit guides (each a tuned model and its reference) and at most one value model.
Everything held per model — graphdefs, weights, prompt ids and masks, KV caches, next-token outputs, templates —
is a `Members` with the same roles, so code says `outputs.value` or `zip(outputs.tuned, outputs.reference)`
instead of computing positions in a flat list. `Members` is a pytree (roles are its children; an absent value
model is `None`, an empty subtree), so it crosses `jit` and lives in the decode state; a `Members` of graphdefs
is hashable and keys the compiled program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import jax

T = TypeVar("T")
U = TypeVar("U")


@dataclasses.dataclass(frozen=True)
class Members(Generic[T]):
    base: T
    tuned: tuple[T, ...] = ()  # [G] one per implicit guide ...
    reference: tuple[T, ...] = ()  # [G] ... and its reference
    value: T | None = None  # the explicit guide's token-value model

    def __post_init__(self):
        if len(self.tuned) != len(self.reference):
            raise ValueError(f"{len(self.tuned)} tuned models but {len(self.reference)} references")

    @property
    def n_implicit(self) -> int:  # G
        return len(self.tuned)

    @property
    def has_value(self) -> bool:
        return self.value is not None

    def __iter__(self) -> Iterator[T]:
        """Every member once: base, tuned_0, reference_0, ..., value (the order of prefill and of forward-token
        counts)."""
        yield self.base
        for t, r in zip(self.tuned, self.reference):
            yield t
            yield r
        if self.value is not None:
            yield self.value

    def __len__(self) -> int:
        return 1 + 2 * self.n_implicit + self.has_value

    def map(self, fn: Callable[..., U], *others: Members) -> Members[U]:
        """`fn(x, *ys)` applied role by role to this and aligned `Members` (same roles)."""
        return Members(
            base=fn(self.base, *(o.base for o in others)),
            tuned=tuple(fn(x, *ys) for x, *ys in zip(self.tuned, *(o.tuned for o in others))),
            reference=tuple(fn(x, *ys) for x, *ys in zip(self.reference, *(o.reference for o in others))),
            value=None if self.value is None else fn(self.value, *(o.value for o in others)))

    @classmethod
    def of(cls, items: list[Any] | tuple, n_implicit: int, has_value: bool) -> Members:
        """The inverse of iteration: a flat list in `__iter__` order -> Members."""
        items = list(items)
        if len(items) != 1 + 2 * n_implicit + has_value:
            raise ValueError(f"{len(items)} items for {n_implicit} implicit guides and value={has_value}")
        return cls(base=items[0], tuned=tuple(items[1:1 + 2 * n_implicit:2]),
                   reference=tuple(items[2:2 + 2 * n_implicit:2]), value=items[-1] if has_value else None)


jax.tree_util.register_dataclass(Members, data_fields=["base", "tuned", "reference", "value"], meta_fields=[])
