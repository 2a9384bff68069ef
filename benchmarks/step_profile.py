"""Where one IVG token step's time goes, op by op, and what this machine's matmuls reach at its shapes (issue 14).

The step of `benchmarks/ivg_peak.py` (GPT-2-small-shaped base, tuned, reference and a token value model; IVG with
W, K = 4, 4: 16 rows for one prompt; blocks unrolled on per-layer weights, float32) is compiled alone and traced
with `jax.profiler`: XLA:CPU records every thunk it runs (its fusions, dots, copies) on the threads that run it.
The script sums the thread time of each kind of op, named by the HLO instruction it ran (a dot fusion by its
output shape: [16, 768] the attention and MLP-down projections, [16, 3072] MLP-up, [16, 50257] the vocab
projections). Then the same matmul shapes alone, jitted, against numpy's BLAS (OpenBLAS in the wheels) and the
2048^3 peak, so the distance to peak is split into what the kernels reach at M = 16 and what the step loses
around them; and XLA's rate with the weight held `[N, K]` (transposed, an `nn.Linear`'s layout and XNNPACK's
own) instead of the model's `[K, N]`, which tells whether another weight layout would pay.

    python benchmarks/step_profile.py
    python benchmarks/step_profile.py --prompts 8                 # 128 rows
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import statistics
import tempfile
import time

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ivg_peak import make_models, matmul_peak  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from timing import alternating, cpu_name, report  # noqa: E402

import ivg_jax  # noqa: E402
from ivg_jax.decoding import engine  # noqa: E402
from ivg_jax.model.transformer import unstack_blocks  # noqa: E402

SHAPES = [(768, 768), (768, 3072), (3072, 768), (768, 50257)]  # GPT-2 small: q/k/v/o, MLP up, down, vocab


def _median_s(fn, *args, repeats: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compiled_step(n_prompts: int):
    models = make_models(jnp.float32)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(100, 50000, size=12 + i % 5).tolist() for i in range(n_prompts)]
    guidance = ivg_jax.Guidance([ivg_jax.ImplicitGuide(models[1], models[2], 1.0)],
                                ivg_jax.ExplicitGuide(models[3], 1.0), token="implicit", chunk="explicit")
    call = engine.plan(models[0], prompts, guidance, ivg_jax.Search(4, 4, 5), ivg_jax.Sampling(0.7), 50,
                       stop_ids=[], unroll_layers=True)
    inputs, _, _ = engine.encode_inputs(call, prompts)
    params = engine.placed_params(call).map(unstack_blocks)
    program = call.program
    state = engine.init_state(program, params, inputs)
    rows = jnp.repeat(jnp.arange(inputs.w_explicit.shape[0]), program.width)
    w_imp, w_exp = jnp.take(inputs.w_implicit, rows, axis=0), jnp.take(inputs.w_explicit, rows, axis=0)
    step = jax.jit(lambda p, s: engine._token_step(program, p, w_imp, w_exp, inputs.stops, s))
    compiled = step.lower(params, state).compile()
    return compiled, (params, state), int(rows.shape[0])


def op_times(compiled, args, calls: int = 3) -> tuple[dict, float]:
    """-> ({op kind: thread ms per step}, thread ms per step in all) from a profiler trace of `calls` steps."""
    from jax.profiler import ProfileData

    defs = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?) ([\w\-]+)\(", compiled.as_text(), re.M)}
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(calls):
            jax.block_until_ready(compiled(*args))
        jax.profiler.stop_trace()
        data = ProfileData.from_file(sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1])
    kinds = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):  # the threads that run the program's thunks
                continue
            for event in line.events:
                if event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")) or event.name.startswith("end:"):
                    continue
                shape, op = defs.get(event.name, ("", "other"))
                if event.name.startswith(("ynn_fusion", "xnn_fusion")) or op == "dot":
                    kind = f"dot -> {shape.split('{')[0]}"
                elif op == "copy" or event.name.startswith("copy"):
                    kind = "copy"
                else:
                    kind = "other (norms, attention softmax, cache writes, guidance, sampling)"
                kinds[kind] += event.duration_ns / 1e6 / calls
    return dict(kinds), sum(kinds.values())


def _dot_out_in(x: jax.Array, w_out_in: jax.Array) -> jax.Array:
    """x [M, K] @ w.T for a weight held [N, K] (an `nn.Linear`'s layout), contracting both last axes."""
    return jax.lax.dot_general(x, w_out_in, (((1,), (1,)), ((), ())))


def matmul_rates(m: int, rounds: int = 60) -> list[tuple]:
    """(K, N, XLA GFLOP/s, XLA GFLOP/s with the weight held [N, K], numpy GFLOP/s) of [m, K] x [K, N] float32,
    each library on every core. The model holds its weights [K, N] ([in, out]); XNNPACK's own layout is [N, K].
    The three are called in turn, `rounds` times, medians: at M = 16 a call takes well under a millisecond, and
    timing each in its own block let the machine's drift decide which won."""
    rng = np.random.default_rng(0)
    out = []
    for k, n in SHAPES:
        x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
        calls = {"xla": (jax.jit(jnp.dot), (jnp.asarray(x), jnp.asarray(w))),
                 "out_in": (jax.jit(_dot_out_in), (jnp.asarray(x), jnp.asarray(np.ascontiguousarray(w.T)))),
                 "blas": (np.dot, (x, w))}
        for fn, call_args in calls.values():
            jax.block_until_ready(fn(*call_args))  # compiles
        med = alternating(calls, rounds)
        flop = 2 * m * k * n
        out.append((k, n, *(flop / med[name] / 1e9 for name in calls)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    peak = matmul_peak(jnp.float32)
    compiled, step_args, rows = compiled_step(args.prompts)
    step_ms = 1000 * _median_s(compiled, *step_args, repeats=5)
    kinds, busy = op_times(compiled, step_args)
    lines = [f"{cpu_name()} ({os.cpu_count()} CPUs), XLA_FLAGS="
             f"{os.environ.get('XLA_FLAGS', '')}; IVG token step at {rows} rows, float32, unrolled blocks; "
             f"step {step_ms:.0f} ms (median of 5); thread time {busy:.0f} ms per step over "
             f"{busy / step_ms:.2f} threads busy on average; float32 matmul peak {peak:.0f} GFLOP/s (2048^3)", "",
             "| op | thread ms per step | share |", "|---|---:|---:|"]
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        if ms >= 0.5:
            lines.append(f"| {kind} | {ms:.1f} | {100 * ms / busy:.0f}% |")
    lines += ["", f"| [{rows}, K] x [K, N] float32 | XLA GFLOP/s | XLA, weight held [N, K] | numpy (BLAS) GFLOP/s "
              "| XLA % of peak | XLA [N, K] % of peak | BLAS % of peak |", "|---|---:|---:|---:|---:|---:|---:|"]
    for k, n, xla, out_in, blas in matmul_rates(rows):
        lines.append(f"| K={k}, N={n} | {xla:.0f} | {out_in:.0f} | {blas:.0f} | {100 * xla / peak:.0f}% "
                     f"| {100 * out_in / peak:.0f}% | {100 * blas / peak:.0f}% |")
    report("\n" + "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
