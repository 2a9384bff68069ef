"""Process-level JAX settings that entry points (CLI, benchmarks, notebooks) opt into.

The library never changes global state on import; jobs call `tune_cpu()` first thing.
"""

from __future__ import annotations

import os

from ivg_jax.errors import InputError

# XNNPACK's kernels beat XLA:CPU's default dot emitter on the skinny matmuls of batched decoding (measured
# ~1.2-1.6x per SmolLM2 decode step on 2 cores; numerics within the float32 parity tests' tolerance).
CPU_FLAGS = ("--xla_cpu_use_xnnpack=true",)


# The library XLA:CPU hands a search's matmuls to, chosen per compiled search (jit's `compiler_options`: the rest
# of the process keeps XLA's default). jaxlib's default, YNNPACK (`xla`), is fastest at one or a few rows and at
# 64 rows; around 8-48 rows (one prompt's W·K = 16) XLA's own Eigen dots are faster on AVX2 CPUs.
# `python benchmarks/cpu_matmuls.py` measures it side by side on a machine. Accelerators ignore the choice.
_NO_YNNPACK = {"xla_cpu_use_xnnpack": False, "xla_cpu_experimental_ynn_fusion_type": ""}
CPU_MATMULS = {"xla": None, "eigen": _NO_YNNPACK}

# Choices once offered and why they are gone; a config naming one gets this line instead of a silent fallback.
RETIRED_CPU_MATMULS = {
    "onednn": "'onednn' compiled the same program as 'eigen' (jaxlib 0.10's CPU backend ignores "
              "xla_cpu_experimental_onednn_custom_call), and XLA's oneDNN fusions that do run were slower than the "
              "default on every shape measured and kill the process on a GELU MLP once they fuse its activation "
              "(benchmarks/cpu_matmuls.py --dots); use 'eigen' or the default 'xla'",
}


def check_cpu_matmuls(cpu_matmuls: str) -> None:
    if cpu_matmuls in RETIRED_CPU_MATMULS:
        raise InputError(f"cpu_matmuls={cpu_matmuls!r} is no longer offered: {RETIRED_CPU_MATMULS[cpu_matmuls]}")
    if cpu_matmuls not in CPU_MATMULS:
        raise InputError(f"cpu_matmuls must be one of {', '.join(CPU_MATMULS)}; got {cpu_matmuls!r}")


def with_xla_flags(current: str, flags) -> str:
    """An XLA_FLAGS value: `current` with each of `flags` ("--name=value") added unless `current` names it already
    (a flag the user set wins). Names are compared whole: a user's `--xla_foo_bar=1` does not hide `--xla_foo`."""
    named = {token.split("=")[0] for token in current.split()}
    extra = [f for f in flags if f.split("=")[0] not in named]
    return " ".join([current, *extra]).strip() if extra else current


def tune_cpu() -> None:
    """Adds the CPU flags to XLA_FLAGS unless the user set them. Must run before JAX creates its backends."""
    os.environ["XLA_FLAGS"] = with_xla_flags(os.environ.get("XLA_FLAGS", ""), CPU_FLAGS)


def free_memory_bytes(devices) -> int | None:
    """Bytes free where an array spread over `devices` would live: the host's available memory for CPU devices
    (they all share it), else the least free on any one device times their count; None when unknown."""
    devices = list(devices)
    if not devices:
        return None
    if devices[0].platform == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None
    free = []
    for device in devices:
        stats = device.memory_stats() or {}
        if "bytes_limit" not in stats:
            return None
        free.append(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return min(free) * len(free)
