"""Process-level JAX settings that entry points (CLI, benchmarks, notebooks) opt into.

The library never changes global state on import; jobs call `tune_cpu()` first thing (a notebook or test that wants
only the collective patience calls `patient_cpu_collectives()`). Both must run before JAX creates its backends.
"""

from __future__ import annotations

import os

# XNNPACK's kernels beat XLA:CPU's default dot emitter on the skinny matmuls of batched decoding (measured
# ~1.2-1.6x per SmolLM2 decode step on 2 cores; numerics within the float32 parity tests' tolerance).
MATMUL_FLAGS = ("--xla_cpu_use_xnnpack=true",)
# Host-platform devices (`jax_num_cpu_devices`) share the machine's cores, so on a busy machine one device can reach
# a collective a minute after the others; XLA:CPU then aborts the whole process (SIGABRT: "Termination timeout for
# `all reduce` ... exceeded", 20 s warning + 40 s). Seen on a loaded 2-core CI machine; ten minutes instead.
COLLECTIVE_FLAGS = ("--xla_cpu_collective_call_terminate_timeout_seconds=600",)
CPU_FLAGS = MATMUL_FLAGS + COLLECTIVE_FLAGS


def add_xla_flags(flags: tuple[str, ...]) -> None:
    """Appends each flag to XLA_FLAGS unless the user already set that flag (to any value)."""
    current = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in flags if f.split("=")[0] not in current]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()


def patient_cpu_collectives() -> None:
    """Only the collective timeout: for sharding on host devices without changing the matmul kernels."""
    add_xla_flags(COLLECTIVE_FLAGS)


def tune_cpu() -> None:
    """The CPU flags (XNNPACK matmuls and collective patience), unless the user set them."""
    add_xla_flags(CPU_FLAGS)
