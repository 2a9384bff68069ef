"""The benchmarks' one timing loop (a first call, compiling included, then the median of `repeats` more) and
their one way of publishing a result table."""

from __future__ import annotations

import os
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
