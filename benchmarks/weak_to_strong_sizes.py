"""What the weak-to-strong run costs on this machine, call by call, to size its CPU preset (issue 15, item 3):
loading each model, the data collection's sampling call (the 0.5B guide model, plain) and the decode calls of the
1.5B base (plain, and IVG with three 0.5B guides made as top-2-block training leaves them), in float32 and
bfloat16. Seconds per call, median of `--repeats` after one compiling call; the preset's run time is the sum of
these over its batches.

    ivg assets fetch qwen2.5-coder-0.5b && ivg assets fetch qwen2.5-coder-1.5b
    python benchmarks/weak_to_strong_sizes.py --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import platform
import time

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
from shared_trunk import retrained  # noqa: E402
from timing import timed  # noqa: E402

import ivg_jax  # noqa: E402
from ivg_jax.experiments.sentiment.pipeline import PRESETS, SentimentConfig, load_prompts  # noqa: E402
from ivg_jax.model.api import attach_head  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="w2s")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--sample-prompts", type=int, default=16)
    ap.add_argument("--decode-prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    cfg = SentimentConfig(run_dir="unused", **PRESETS[args.preset])
    pool = load_prompts(cfg, "train")
    print(f"# {platform.processor() or platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}; "
          f"base {cfg.model}, guides {cfg.guide_model}; {cfg.max_new_tokens} new tokens; "
          f"W,K,L = {cfg.beams},{cfg.candidates},{cfg.chunk_length}; median of {args.repeats} after the first call")
    print("| dtype | call | prompts | rows | first call (s) | s / call | s / prompt |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype in args.dtypes.split(","):
        measure(cfg, dtype, pool, args)


def measure(cfg: SentimentConfig, dtype: str, pool: list[str], args) -> None:
    """One table row per call of the run, its models in `dtype`."""
    t = time.perf_counter()
    guide = ivg_jax.load_model(cfg.guide_model, dtype=dtype)
    base = ivg_jax.load_model(cfg.model, dtype=dtype)
    print(f"| {dtype} | load both | | | {time.perf_counter() - t:.1f} | | |", flush=True)
    tuned = retrained(guide, 2, 1)
    value = retrained(attach_head(guide, "value", scale=0.01, seed=2), 2, 3)

    def report(name, call, prompts, rows):
        _, first, median = timed(call, args.repeats)
        print(f"| {dtype} | {name} | {prompts} | {rows} | {first:.1f} | {median:.1f} | {median / prompts:.2f} |",
              flush=True)

    sample = cfg.sample_settings
    n = cfg.samples_per_prompt
    rows = [p for p in pool[:args.sample_prompts] for _ in range(n)]
    report(f"sample from the guide model ({n} per prompt)",
           lambda: sample.decode(guide, rows, sample.guidance(), range(len(rows))), args.sample_prompts, len(rows))
    chunk = pool[:args.decode_prompts]
    for method in ("base", "ivg"):
        settings = cfg.decode_settings(method)
        guidance = settings.guidance(tuned=lambda: tuned, reference=lambda: guide, value=lambda: value)
        report(f"{method} (base {cfg.model})",
               lambda s=settings, g=guidance: s.decode(base, chunk, g, range(len(chunk))),
               len(chunk), len(chunk) * settings.beams * settings.candidates)


if __name__ == "__main__":
    main()
