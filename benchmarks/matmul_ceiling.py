"""The fastest IVG token step this machine's matmul kernels allow, in XLA and in torch (issue 14's goals).

At GPT-2-small shapes an IVG token step is, to ~93% of its thread time (`benchmarks/step_profile.py`), the matmuls
of its four models: per block q, k, v, o [768, 768], MLP up [768, 3072] and down [3072, 768], 12 blocks each, and a
vocab projection [768, 50257] per model (three tied heads and the value model's head). This script runs exactly
those matmuls and nothing else — distinct weights, streamed from memory as decoding streams them, each matmul
waiting on the one before as blocks do — at M rows, in XLA (one jitted program, the model's dtype handling: float32
accumulation) and in torch (`x @ w`: oneDNN/MKL on x86, the kernels transformers' `generate` runs), each framework in
a process of its own (their thread pools spin-wait and slow each other down). Per framework, dtype and rows: ms per
step, GFLOP/s, % of the matmul peak (the best 2048^3 dot of either framework in that dtype), the weights' bytes
streamed per second, and the seconds 50 such steps take — a floor under a 50-token IVG search for one prompt
(16 rows), which also runs prefill, chunk scoring, attention, guidance and sampling.

    python benchmarks/matmul_ceiling.py [--rows 16 128] [--dtypes float32 bfloat16] [--repeats 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from timing import cpu_name, report, timed

D, F, V, BLOCKS, MODELS = 768, 3072, 50257, 12, 4
SHAPES = ([(D, D)] * 4 + [(D, F), (F, D)]) * BLOCKS + [(D, V)]  # one model's matmuls, in order
STEPS = 50  # new tokens of the IVG search


def step_flop(rows: int) -> float:
    return MODELS * sum(2 * rows * k * n for k, n in SHAPES)


def weights(dtype_bytes: int) -> float:
    return MODELS * sum(k * n for k, n in SHAPES) * dtype_bytes


def _random_weights(seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.standard_normal((k, n), dtype=np.float32) * 0.02 for _ in range(MODELS) for k, n in SHAPES]


def _median_s(call, repeats: int) -> float:
    """Median seconds of `repeats` calls after a first (compiling, warming) one."""
    return timed(call, repeats)[2]


def run_xla(dtype: str, rows_list: list[int], repeats: int) -> dict:
    from ivg_jax.runtime import tune_cpu

    tune_cpu()
    import jax
    import jax.numpy as jnp
    import numpy as np

    ws = [jnp.asarray(w, dtype) for w in _random_weights()]

    @jax.jit
    def step(x, ws):
        total = jnp.float32(0)
        for w in ws:  # each matmul waits on the one before, as blocks do
            x_in = x if w.shape[0] == D else jnp.tile(x, (1, F // D))
            s = jnp.sum(jnp.matmul(x_in, w, preferred_element_type=jnp.float32))
            x = x + (s * 1e-30).astype(x.dtype)
            total = total + s
        return total

    a = jnp.asarray(np.random.default_rng(1).standard_normal((2048, 2048)), dtype)
    dot = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    peak = 2 * 2048 ** 3 / _median_s(lambda: jax.block_until_ready(dot(a)), 5) / 1e9
    out = {"peak": peak}
    for rows in rows_list:
        x = jnp.asarray(np.random.default_rng(2).standard_normal((rows, D)), dtype)
        out[rows] = _median_s(lambda x=x: jax.block_until_ready(step(x, ws)), repeats)
    return out


def run_torch(dtype: str, rows_list: list[int], repeats: int) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count())
    tdtype = getattr(torch, dtype)
    ws = [torch.from_numpy(w).to(tdtype) for w in _random_weights()]

    def step(x):
        total = torch.zeros((), dtype=torch.float32)
        for w in ws:
            x_in = x if w.shape[0] == D else x.repeat(1, F // D)
            s = (x_in @ w).float().sum()
            x = x + (s * 1e-30).to(x.dtype)
            total = total + s
        return float(total)

    with torch.inference_mode():
        a = torch.randn(2048, 2048).to(tdtype)
        peak = 2 * 2048 ** 3 / _median_s(lambda: a @ a, 5) / 1e9
        out = {"peak": peak}
        for rows in rows_list:
            x = torch.randn(rows, D).to(tdtype)
            out[rows] = _median_s(lambda x=x: step(x), repeats)
    return out


def child(framework: str, dtype: str, rows: list[int], repeats: int) -> dict:
    """Runs one framework in a process of its own -> {"peak": GFLOP/s, rows: seconds per step}."""
    proc = subprocess.run([sys.executable, __file__, "--child", framework, "--dtypes", dtype, "--repeats",
                           str(repeats), "--rows", *map(str, rows)], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {("peak" if k == "peak" else int(k)): v for k, v in result.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="")
    ap.add_argument("--child", choices=["xla", "torch"])
    args = ap.parse_args()
    if args.child:
        run = run_xla if args.child == "xla" else run_torch
        print(json.dumps(run(args.dtypes[0], args.rows, args.repeats)))
        return
    lines = [f"The IVG step's matmuls alone (four GPT-2-small-shaped models: {len(SHAPES)} distinct weights each), "
             f"{cpu_name()}, {os.cpu_count()} CPUs; each framework in its own process; median of {args.repeats} "
             f"steps; peak = the best 2048^3 dot of either framework in that dtype", "",
             "| dtype | rows | framework | ms per step | GFLOP/s | % of peak | weights GB/s | 50 steps s |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for dtype in args.dtypes:
        results = {fw: child(fw, dtype, args.rows, args.repeats) for fw in ("xla", "torch")}
        peak = max(r["peak"] for r in results.values())
        for rows in args.rows:
            for fw, r in results.items():
                s = r[rows]
                lines.append(f"| {dtype} | {rows} | {fw} | {s * 1e3:.0f} | {step_flop(rows) / s / 1e9:.0f} | "
                             f"{100 * step_flop(rows) / s / 1e9 / peak:.0f}% | "
                             f"{weights(2 if dtype == 'bfloat16' else 4) / s / 1e9:.1f} | {STEPS * s:.2f} |")
                print(lines[-1], flush=True)
        lines.append(f"| {dtype} | | peak GFLOP/s | xla {results['xla']['peak']:.0f}, torch "
                     f"{results['torch']['peak']:.0f} | | | | |")
    report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
