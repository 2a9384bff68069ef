"""Do fused projections pay on XLA:CPU? (issue 14, item 2.) SmolLM2-135M's 30 blocks' matmuls at decode shapes
([rows, d_model] activations), written two ways and run alternately in one process:

    separate  q, k, v as three matmuls, gate and up as two (the model's layout)
    fused     one [d, (Nq + 2 Nkv) H] q/k/v matmul and one [d, 2 F] gate/up matmul, outputs sliced

Attention itself is left out (a stand-in elementwise mix keeps every projection live), so the difference is the
projections' alone. Random weights in the model's dtype (cost does not depend on values); median of --repeats.

    python benchmarks/fused_projections.py [--rows 1 16 64] [--dtypes float32 bfloat16] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ivg_jax.defaults import default_model_path  # noqa: E402
from ivg_jax.loading import inspect_model  # noqa: E402
from ivg_jax.model.layers import mm  # noqa: E402  (the model's matmul: float32 accumulation)

sys.path.insert(0, os.path.dirname(__file__))
from timing import alternating, report  # noqa: E402


def weights(cfg, dtype) -> tuple[list[dict], list[dict]]:
    """(separate, fused) per-layer weights with the same values."""
    d, q, kv, f = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.d_ff
    keys = iter(jax.random.split(jax.random.key(0), 7 * cfg.n_layers))
    w = lambda *shape: (0.02 * jax.random.normal(next(keys), shape)).astype(dtype)  # noqa: E731
    separate = [dict(q=w(d, q), k=w(d, kv), v=w(d, kv), o=w(q, d), gate=w(d, f), up=w(d, f), down=w(f, d))
                for _ in range(cfg.n_layers)]
    fused = [dict(qkv=jnp.concatenate([p["q"], p["k"], p["v"]], 1), o=p["o"],
                  gate_up=jnp.concatenate([p["gate"], p["up"]], 1), down=p["down"]) for p in separate]
    return separate, fused


def norm(x):
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), -1, keepdims=True) + 1e-6).astype(x.dtype)


def mix(q, k, v):
    """A stand-in for attention that reads every projection: [rows, Nq H] from q, k, v."""
    reps = q.shape[1] // k.shape[1]
    return q * jnp.tile(k + v, (1, reps))


@jax.jit
def blocks_separate(x, layers):
    for p in layers:
        h = norm(x)
        x = x + mm(mix(mm(h, p["q"]), mm(h, p["k"]), mm(h, p["v"])), p["o"])
        h = norm(x)
        x = x + mm(jax.nn.silu(mm(h, p["gate"])) * mm(h, p["up"]), p["down"])
    return x


@jax.jit
def blocks_fused(x, layers):
    for p in layers:
        q_width, kv_width = p["o"].shape[0], (p["qkv"].shape[1] - p["o"].shape[0]) // 2
        qkv = mm(norm(x), p["qkv"])
        x = x + mm(mix(qkv[:, :q_width], qkv[:, q_width:q_width + kv_width], qkv[:, q_width + kv_width:]), p["o"])
        f = p["down"].shape[0]
        gate_up = mm(norm(x), p["gate_up"])
        x = x + mm(jax.nn.silu(gate_up[:, :f]) * gate_up[:, f:], p["down"])
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    cfg = inspect_model(default_model_path()).config
    lines = [f"SmolLM2-135M's {cfg.n_layers} blocks' projections (d {cfg.d_model}, {cfg.n_heads} / "
             f"{cfg.n_kv_heads} heads of {cfg.head_dim}, d_ff {cfg.d_ff}), one decode step's matmuls, median of "
             f"{args.repeats}, alternating; {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
             f"jax {jax.__version__} on {jax.default_backend()}.", "",
             "| dtype | rows | separate ms | fused ms | separate / fused |", "|---|---:|---:|---:|---:|"]
    for dtype in args.dtypes:
        separate, fused = weights(cfg, jnp.dtype(dtype))
        for rows in args.rows:
            x = jnp.ones((rows, cfg.d_model), dtype)
            a, b = blocks_separate(x, separate), blocks_fused(x, fused)  # compile; the same numbers
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            # the same sums in another grouping: bf16 rounding drifts over 30 blocks, float32 does not
            assert np.abs(a - b).max() <= (0.1 if dtype == "bfloat16" else 1e-3) * np.abs(b).max(), "outputs differ"
            med = alternating({"separate": (blocks_separate, (x, separate)), "fused": (blocks_fused, (x, fused))},
                              args.repeats)
            s, f = med["separate"], med["fused"]
            lines.append(f"| {dtype} | {rows} | {s * 1e3:.2f} | {f * 1e3:.2f} | {s / f:.2f}x |")
            print(lines[-1], flush=True)
    report("\n" + "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
