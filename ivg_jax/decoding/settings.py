"""What one decode does to each prompt, in one frozen object: where guidance acts and how strongly, the search
shape, sampling, length, templates and the stop string.

Three front ends decode: dataset jobs (`DecodeJobConfig`, the `ivg decode` command), the paper's recipes
(`Recipe`) and the sentiment experiment (one `DecodeSettings` per method). The first two extend this class with
their inputs and outputs; the experiment derives one per method. So the checks, the `Search` / `Sampling` /
`Guidance` built from the settings and the call into the engine exist once, here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from ivg_jax.errors import InputError, check_template, require_count, require_positive
from ivg_jax.guidance import MODES, Guidance, Search, guidance_for
from ivg_jax.runtime import check_cpu_matmuls


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeSettings:
    """Checked when made (one `InputError` naming the bad setting), so nothing waits for a model to load."""

    token: str = "none"  # guidance at every token: "none", "implicit" or "explicit"
    chunk: str = "none"  # the score that picks chunks in beam search: "none", "implicit" or "explicit"
    beams: int = 1  # W
    candidates: int = 1  # K per beam
    chunk_length: int | None = None  # L; None = the whole budget (W=1, K=N is best-of-N)
    temperature: float = 0.7
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 50
    implicit_weight: float = 1.0
    explicit_weight: float = 1.0
    base_template: str = "{prompt}"
    guide_template: str = "{prompt}"
    stop: str = ""  # a string that ends a continuation; "" = none
    compaction: int = 0  # halve the batch up to this many times as rows finish (speed only; results unchanged)
    unroll_layers: bool = False  # blocks on per-layer weights (speed for compile time; float32 results unchanged)
    cpu_matmuls: str = "xla"  # XLA:CPU's matmul library for the search: "xla" (YNNPACK) or "eigen"

    def __post_init__(self):
        if self.token not in MODES or self.chunk not in MODES:
            raise InputError(f"token and chunk must be one of {MODES}; got token={self.token!r}, chunk={self.chunk!r}")
        require_positive(self, ("beams", "candidates", "max_new_tokens"))
        require_count(self.compaction, "compaction", "halvings of the batch as rows finish")
        check_cpu_matmuls(self.cpu_matmuls)
        if self.chunk_length is not None and self.chunk_length < 1:
            raise InputError(f"chunk_length must be >= 1 (or unset); got {self.chunk_length}")
        check_template(self.base_template, "base_template")
        check_template(self.guide_template, "guide_template")
        _ = self.sampling  # refuses bad temperature / top_k / top_p values now

    @property
    def search(self) -> Search:
        return Search(self.beams, self.candidates, self.chunk_length)

    @property
    def sampling(self):
        from ivg_jax.decoding.sampling import Sampling

        return Sampling(self.temperature, top_k=self.top_k, top_p=self.top_p)

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if self.stop else []

    @property
    def roles(self) -> tuple[str, ...]:
        """The guide models these settings load: ("tuned", "reference") for implicit, ("value",) for explicit."""
        modes = (self.token, self.chunk)
        return (("tuned", "reference") if "implicit" in modes else ()) + (("value",) if "explicit" in modes else ())

    def guidance(self, tuned: Callable | None = None, reference: Callable | None = None,
                 value: Callable | None = None) -> Guidance:
        """The Guidance of these settings; `tuned` / `reference` / `value` are zero-argument callables returning a
        Model, called only for the guides the modes use."""
        return guidance_for(self.token, self.chunk, tuned=tuned, reference=reference, value=value,
                            implicit_weight=self.implicit_weight, explicit_weight=self.explicit_weight,
                            guide_template=self.guide_template, base_template=self.base_template)

    def preflight(self, base, prompts: Sequence[str], guidance: Guidance) -> None:
        """Every check `decode` would make, on configs and tokenizers only (`inspect_model` stand-ins)."""
        from ivg_jax.decoding.engine import preflight

        preflight(base, list(prompts), guidance, self.search, self.max_new_tokens)

    def decode(self, base, prompts: Sequence[str], guidance: Guidance, seeds: Sequence[int]):
        """-> the engine's `Generation` for `prompts` (raw x; the templates are applied by the engine)."""
        from ivg_jax.decoding.engine import generate

        return generate(base, list(prompts), guidance, self.search, self.sampling,
                        max_new_tokens=self.max_new_tokens, seed=list(seeds), stop_strings=self.stop_strings,
                        compaction=self.compaction, unroll_layers=self.unroll_layers,
                        cpu_matmuls=self.cpu_matmuls)
