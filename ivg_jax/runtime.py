"""Process-level JAX settings that entry points (CLI, benchmarks, notebooks) opt into.

The library never changes global state on import; jobs call `tune_cpu()` first thing.
"""

from __future__ import annotations

import os

# XNNPACK's kernels beat XLA:CPU's default dot emitter on the skinny matmuls of batched decoding (measured
# ~1.2-1.6x per SmolLM2 decode step on 2 cores; numerics within the float32 parity tests' tolerance).
CPU_FLAGS = ("--xla_cpu_use_xnnpack=true",)


def tune_cpu() -> None:
    """Adds the CPU flags to XLA_FLAGS unless the user set them. Must run before JAX creates its backends."""
    current = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in CPU_FLAGS if f.split("=")[0] not in current]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
