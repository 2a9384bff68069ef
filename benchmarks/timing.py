"""The benchmarks' one timing loop (a first call, compiling included, then the median of `repeats` more), their
one way of publishing a result table, and the name of the machine it was measured on."""

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
