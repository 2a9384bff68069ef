"""The benchmarks' one timing loop: a first call (compiling included), then the median of `repeats` more."""

from __future__ import annotations

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
