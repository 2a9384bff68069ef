"""The benchmarks' timing loops (one call: a first call, compiling included, then the median of `repeats` more;
several choices: called in turn, medians), their one way of publishing a result table, and the name of the
machine it was measured on."""

from __future__ import annotations

import os
import platform
import statistics
import time


def timed(call, repeats: int):
    """-> (the first call's result, its seconds, the median seconds of the next `repeats` calls)."""
    t = time.perf_counter()
    out = call()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return out, first, statistics.median(times)


def alternating(calls: dict, rounds: int) -> dict:
    """{name: median seconds} of each `(fn, args)` in `calls` (compiled and warm already), waited on until its
    result is ready, the calls made in turn `rounds` times: side by side, so the machine's drift falls on every
    choice alike instead of deciding which one wins."""
    import jax  # here, not at the top: scripts set XLA_FLAGS before JAX loads

    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (fn, args) in calls.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def report(text: str, out: str = "") -> None:
    """Prints a benchmark's result text and, given a path `out`, writes it there (its directory made)."""
    print(text)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(text + "\n")


def cpu_name() -> str:
    """The CPU's model name (hosts of one kind of machine differ: a Xeon one day, an EPYC the next)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
