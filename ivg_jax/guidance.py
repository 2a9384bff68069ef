"""What steers the base: implicit and explicit value functions, where each is applied, and the search shape.

Everything here is checked on the host before anything compiles (spec §1-§4). Guide weights are data of the
compiled program (per prompt row), so changing them never recompiles; models, modes and W/K/L are structure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ivg_jax.errors import InputError, UnsupportedError, check_template
from ivg_jax.model.api import Model

Mode = Literal["none", "implicit", "explicit"]
MODES = ("none", "implicit", "explicit")


@dataclasses.dataclass(frozen=True, eq=False)
class ImplicitGuide:
    """log π_tuned − log π_ref of a DPO-tuned model and its reference, scaled by `weight` (a scalar or one weight
    per prompt). `reference_template` defaults to `template`; a different one turns the pair into a contrastive
    prompt (the same model under two templates is a valid implicit value too)."""

    tuned: Model
    reference: Model
    weight: float = 1.0
    template: str = "{prompt}"
    reference_template: str | None = None

    @property
    def templates(self) -> tuple[str, str]:
        return self.template, self.reference_template or self.template


@dataclasses.dataclass(frozen=True, eq=False)
class ExplicitGuide:
    """A value model (vocab-sized value head, `config.head == "value"`); `weight` scales it at token level."""

    value: Model
    weight: float = 1.0
    template: str = "{prompt}"


@dataclasses.dataclass(frozen=True, eq=False)
class Guidance:
    """`token` picks what is added to the base logits each step; `chunk` what scores chunks in beam search."""

    implicit: Sequence[ImplicitGuide] = ()
    explicit: ExplicitGuide | None = None
    token: Mode = "none"
    chunk: Mode = "none"
    base_template: str = "{prompt}"


@dataclasses.dataclass(frozen=True)
class Search:
    """Chunk-level beam search: W beams, K candidates each, chunks of L tokens (None = the whole budget: with
    W=1, K=N that is best-of-N). W=K=1 is plain (guided) sampling."""

    beams: int = 1
    candidates: int = 1
    chunk_length: int | None = None

    @property
    def rows_per_prompt(self) -> int:
        return self.beams * self.candidates


def guidance_for(token: str, chunk: str, *, tuned=None, reference=None, value=None, implicit_weight: float = 1.0,
                 explicit_weight: float = 1.0, guide_template: str = "{prompt}",
                 base_template: str = "{prompt}") -> Guidance:
    """A Guidance with exactly the guides that the `token` and `chunk` modes use (one implicit pair at most).

    `tuned`, `reference`, `value` are zero-argument callables returning a `Model`, called only when their guide
    is used, so jobs load just the models a method needs.
    """
    modes = (token, chunk)
    implicit = [ImplicitGuide(tuned(), reference(), implicit_weight, template=guide_template)] \
        if "implicit" in modes else []
    explicit = ExplicitGuide(value(), explicit_weight, template=guide_template) if "explicit" in modes else None
    return Guidance(implicit=implicit, explicit=explicit, token=token, chunk=chunk, base_template=base_template)


def best_of_n(n: int) -> Search:
    return Search(beams=1, candidates=n, chunk_length=None)


def _vocab(model: Model):
    tok = model.tokenizer
    return None if tok is None else tok.get_vocab()


def same_vocabulary(a: Model, b: Model) -> bool:
    """True when both models map every token string to the same id (sizes alone are not enough)."""
    if a.config.vocab_size != b.config.vocab_size:
        return False
    if a.tokenizer is b.tokenizer:
        return True
    va, vb = _vocab(a), _vocab(b)
    if va is None or vb is None:
        return va is None and vb is None  # tokenizer-less models (token-id prompts): ids are the vocabulary
    return va == vb


def validate(base: Model, guidance: Guidance, search: Search, max_new_tokens: int) -> None:
    """Raises a specific `InputError`/`UnsupportedError` for any inconsistent setting."""
    if guidance.token not in MODES or guidance.chunk not in MODES:
        raise InputError(f"guidance modes must be one of {MODES}; got token={guidance.token!r}, "
                         f"chunk={guidance.chunk!r}")
    for name, value in (("beams (W)", search.beams), ("candidates (K)", search.candidates)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"search {name} must be an integer >= 1; got {value!r}")
    if search.chunk_length is not None and (not isinstance(search.chunk_length, int) or search.chunk_length < 1):
        raise InputError(f"search chunk_length (L) must be an integer >= 1 or None; got {search.chunk_length!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1; got {max_new_tokens!r}")
    if search.rows_per_prompt > 1 and guidance.chunk == "none":
        raise InputError(f"W*K = {search.rows_per_prompt} candidate rows need a chunk-level value to choose between "
                         "them; set guidance.chunk to 'implicit' or 'explicit', or use W=K=1")
    if "implicit" in (guidance.token, guidance.chunk) and not guidance.implicit:
        raise InputError("implicit guidance is selected but no ImplicitGuide (tuned, reference) was given")
    if "explicit" in (guidance.token, guidance.chunk) and guidance.explicit is None:
        raise InputError("explicit guidance is selected but no ExplicitGuide (value model) was given")
    if base.config.head != "lm":
        raise InputError(f"the base model must have an LM head; {base.source} has head={base.config.head!r}")
    check_template(guidance.base_template, "base template")
    for i, g in enumerate(guidance.implicit):
        for template in g.templates:
            check_template(template, f"implicit guide {i} template")
        _check_weight(g.weight, f"implicit guide {i} weight")
        for role, m in (("tuned", g.tuned), ("reference", g.reference)):
            if m.config.head != "lm":
                raise InputError(f"implicit guide {i} {role} model must have an LM head; got {m.config.head!r}")
        if not same_vocabulary(g.tuned, g.reference):
            raise InputError(f"implicit guide {i}: tuned and reference models have different vocabularies; "
                             "log π_tuned − log π_ref needs one tokenizer")
    if guidance.explicit is not None:
        check_template(guidance.explicit.template, "explicit guide template")
        _check_weight(guidance.explicit.weight, "explicit guide weight")
        if guidance.explicit.value.config.head != "value":
            raise InputError(f"the explicit guide must be a value model (head='value'); "
                             f"{guidance.explicit.value.source} has head={guidance.explicit.value.config.head!r}")
    used = [("implicit guide", i, g.tuned) for i, g in enumerate(guidance.implicit)]
    if guidance.explicit is not None:
        used.append(("explicit guide", 0, guidance.explicit.value))
    for kind, i, m in used:
        if same_vocabulary(base, m):
            continue
        if guidance.token == kind.split()[0]:
            raise InputError(
                f"{kind} {i} ({m.source}) does not share the base's vocabulary; token-level guidance adds "
                "logits token by token and needs the base tokenizer. Use it at chunk level instead.")
        if base.tokenizer is None or m.tokenizer is None:
            raise InputError(f"{kind} {i} ({m.source}) has another vocabulary than the base; re-tokenising for it "
                             "needs both models' tokenizers")
    host_scored_kind(base, guidance)  # raises for mixtures


def host_scored_kind(base: Model, guidance: Guidance) -> str | None:
    """The chunk-level kind whose guides have another tokenizer than the base (scored on the host between
    chunks), or None when chunk scores come from the compiled step."""
    if guidance.chunk == "implicit":
        foreign = [not same_vocabulary(base, g.tuned) for g in guidance.implicit]
    elif guidance.chunk == "explicit" and guidance.explicit is not None:
        foreign = [not same_vocabulary(base, guidance.explicit.value)]
    else:
        return None
    if any(foreign) and not all(foreign):
        raise UnsupportedError("chunk-level implicit guides mix the base's vocabulary and another one; use guides "
                               "of one tokenizer at chunk level")
    if all(foreign) and guidance.chunk == "implicit":
        template = guidance.implicit[0].template
        if any(g.templates != (template, template) for g in guidance.implicit):
            raise UnsupportedError("chunk-level implicit guides with another tokenizer are re-tokenised with one "
                                   "template; give every tuned and reference model the same template")
    return guidance.chunk if all(foreign) else None


def _check_weight(weight, where: str) -> None:
    w = np.asarray(weight, np.float64)
    if not np.all(np.isfinite(w)):
        raise InputError(f"{where} must be finite; got {weight!r}")


def per_prompt_weights(value, n_prompts: int, where: str) -> np.ndarray:
    """A scalar or one weight per prompt -> float32 [P]."""
    w = np.asarray(value, np.float32)
    if w.ndim == 0:
        w = np.full(n_prompts, w, np.float32)
    if w.shape != (n_prompts,):
        raise InputError(f"{where}: expected a scalar or {n_prompts} per-prompt weights; got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise InputError(f"{where} must be finite; got {value!r}")
    return w


def n_chunks(search: Search, max_new_tokens: int) -> tuple[int, int]:
    """(number of chunks, chunk length) covering the token budget."""
    length = search.chunk_length or max_new_tokens
    length = min(length, max_new_tokens)
    return math.ceil(max_new_tokens / length), length
