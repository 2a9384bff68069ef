"""Which XLA:CPU flags make decoding fastest on this machine (issue 14, item 2), measured side by side.

XLA_FLAGS are read once per process, so each flag set runs in its own subprocess (one after the other, never two
at once). Each measures, in float32 and bfloat16:

    dot M=16 / M=128   GFLOP/s of jnp.dot at a decode step's skinny shapes ([M, 1536] x [1536, 8960], f32
                       accumulation), median of 20 calls
    plain              the embedded SmolLM2-135M sampling 16 rows (16 prompts), 24 new tokens, no stop string
    ivg                IVG at the main job's search (W, K, L = 2, 4, 6; 4 prompts = 32 rows; tuned, reference and
                       value model copies of SmolLM2 with their top 2 blocks changed, as top-2 training leaves them)

seconds per call: median of `--repeats` after one compiling call. The last column is the ratio to the flag set
that `ivg_jax.runtime.tune_cpu` applies today (>1 = faster than it).

    python benchmarks/cpu_flags.py                 # every flag set below
    python benchmarks/cpu_flags.py --sets xla,xnnpack --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

from timing import cpu_name  # benchmarks/ is on sys.path when run as a script

from ivg_jax.runtime import CPU_MATMULS


def as_xla_flags(options: dict) -> str:
    """jit `compiler_options` ({name: value}) as the XLA_FLAGS string that sets them for a whole process."""
    return " ".join(f"--{name}={str(value).lower() if isinstance(value, bool) else value}"
                    for name, value in options.items())


# name -> XLA_FLAGS. Every set names the XNNPACK flag explicitly, so tune_cpu() (which only adds a flag the user
# has not set) leaves each set as written.
# Since jaxlib 0.10 XLA:CPU hands dots to YNNPACK fusions (`ynn_fusion.N` in a profile) whether or not XNNPACK is
# on, so "xla" differs from "xnnpack" only outside dots; "eigen" also turns the YNNPACK fusions off (XLA's own Eigen
# dots) — the options `generate(cpu_matmuls="eigen")` compiles one search with (`ivg_jax.runtime.CPU_MATMULS`),
# here for the whole process. (An "onednn" set measured before session 26 added
# --xla_cpu_experimental_onednn_custom_call, which jaxlib 0.10 ignores: it measured Eigen's dots a second time.)
FLAG_SETS = {
    "xla": "--xla_cpu_use_xnnpack=false",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "eigen": as_xla_flags(CPU_MATMULS["eigen"]),
}


def cpu_has(flag: str) -> bool:
    try:
        return any(line.startswith("flags") and f" {flag}" in line for line in open("/proc/cpuinfo"))
    except OSError:
        return False


def measure(dtypes: list[str], repeats: int) -> list[dict]:
    """Runs inside one subprocess: its XLA_FLAGS are already set."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ivg_jax
    from ivg_jax.defaults import default_model_path
    from ivg_jax.experiments.sentiment.pipeline import PRESETS, SentimentConfig, load_prompts
    from ivg_jax.model.api import attach_head

    sys.path.insert(0, os.path.dirname(__file__))
    from shared_trunk import retrained
    from timing import timed

    cfg = SentimentConfig(run_dir="unused", **PRESETS["fast"])
    pool = load_prompts(cfg, "train")
    rows = []
    for dtype in dtypes:
        dt = jnp.dtype(dtype)
        for m in (16, 128):
            x = jnp.asarray(np.random.default_rng(0).normal(size=(m, 1536)), dt)
            w = jnp.asarray(np.random.default_rng(1).normal(size=(1536, 8960)) * 0.02, dt)
            dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
            t = timed(lambda f=dot, a=x, b=w: f(a, b).block_until_ready(), 20)[2]
            rows.append(dict(dtype=dtype, call=f"dot M={m}", value=2 * m * 1536 * 8960 / t / 1e9, unit="GFLOP/s"))
        base = ivg_jax.load_model(str(default_model_path()), dtype=dtype)
        tuned = retrained(base, 2, 1)
        value = retrained(attach_head(base, "value", scale=0.01, seed=2), 2, 3)
        for method, n_prompts in (("base", 16), ("ivg", 4)):
            settings = cfg.decode_settings(method)
            settings = dataclasses.replace(settings, stop="")  # every row runs all 24 steps under every flag set
            guidance = settings.guidance(tuned=lambda t=tuned: t, reference=lambda b=base: b,
                                         value=lambda v=value: v)
            prompts = pool[:n_prompts]
            t = timed(lambda s=settings, g=guidance, p=prompts, b=base: s.decode(b, p, g, range(len(p))), repeats)[2]
            rows_ = n_prompts * settings.beams * settings.candidates
            name = f"plain, {rows_} rows" if method == "base" else f"ivg, {rows_} rows"
            rows.append(dict(dtype=dtype, call=name, value=t, unit="s"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(FLAG_SETS))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    dtypes = args.dtypes.split(",")
    if args.child:
        print(json.dumps(measure(dtypes, args.repeats)))
        return

    from ivg_jax.runtime import CPU_FLAGS

    today = next(name for name, flags in FLAG_SETS.items() if flags.split()[0] in CPU_FLAGS)
    results = {}
    for name in args.sets.split(","):
        env = {**os.environ, "XLA_FLAGS": FLAG_SETS[name], "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, __file__, "--child", "--dtypes", args.dtypes, "--repeats",
                              str(args.repeats)], env=env, capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"# {name} done", file=sys.stderr, flush=True)

    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, AMX {'yes' if cpu_has('amx_bf16') else 'no'}, "
          f"AVX-512 {'yes' if cpu_has('avx512f') else 'no'}; median of {args.repeats} after the compiling call; "
          f"ratio = speed over the set tune_cpu() applies today ({today})")
    print("| flags | XLA_FLAGS | dtype | call | result | vs " + today + " |")
    print("|---|---|---|---|---:|---:|")
    for name, rows in results.items():
        for row in rows:
            ref = next((r["value"] for r in results.get(today, []) if r["dtype"] == row["dtype"]
                        and r["call"] == row["call"]), None)
            ratio = "" if ref is None else (row["value"] / ref if row["unit"] == "GFLOP/s" else ref / row["value"])
            ratio = f"{ratio:.2f}x" if ratio != "" else ""
            value = f"{row['value']:.0f} GFLOP/s" if row["unit"] == "GFLOP/s" else f"{row['value']:.2f} s"
            print(f"| {name} | `{FLAG_SETS[name]}` | {row['dtype']} | {row['call']} | {value} | {ratio} |")


if __name__ == "__main__":
    main()
