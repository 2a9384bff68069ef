"""Throughput of the sentiment pipeline's two kinds of engine calls against the number of prompts per call
(issue 14, item 5): data-collection sampling (plain samples of the base, `samples_per_prompt` rows per prompt)
and IVG decoding (W·K rows per prompt, the guides sharing their trunk), on the embedded SmolLM2-135M with
guides made as top-2-block training leaves them. Prompts per second, median of `--repeats` calls after one
compiling call; the pipeline's `sample_batch` / `decode_batch` are chosen from these curves.

    python benchmarks/batch_sizes.py                                  # the fast preset's shapes
    python benchmarks/batch_sizes.py --max-new-tokens 50 --sample-sizes 32,64,128 --decode-sizes 8,16
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
from shared_trunk import retrained  # noqa: E402

import ivg_jax  # noqa: E402
from ivg_jax.defaults import default_model_path  # noqa: E402
from ivg_jax.experiments.sentiment.pipeline import PRESETS, SentimentConfig, load_prompts  # noqa: E402
from ivg_jax.model.api import attach_head  # noqa: E402


def prompts_per_second(call, n_prompts: int, repeats: int) -> float:
    call()  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return n_prompts / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--samples-per-prompt", type=int, default=4)
    ap.add_argument("--sample-sizes", default="16,32,64,128")
    ap.add_argument("--decode-sizes", default="8,16,24,40")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    cfg = SentimentConfig(run_dir="unused", **{**PRESETS["fast"], "max_new_tokens": args.max_new_tokens,
                                               "samples_per_prompt": args.samples_per_prompt})
    base = ivg_jax.load_model(str(default_model_path()))
    tuned = retrained(base, 2, 1)
    value = retrained(attach_head(base, "value", scale=0.01, seed=2), 2, 3)
    pool = load_prompts(cfg, "train")
    print(f"# {platform.processor() or platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}; "
          f"SmolLM2-135M, {args.max_new_tokens} new tokens, median of {args.repeats} calls")
    print("| call | prompts per call | rows | prompts/s |")
    print("|---|---:|---:|---:|")
    sample = cfg.sample_settings
    n = cfg.samples_per_prompt
    for size in (int(x) for x in args.sample_sizes.split(",")):
        rows = [p for p in pool[:size] for _ in range(n)]
        rate = prompts_per_second(lambda rows=rows: sample.decode(base, rows, sample.guidance(), range(len(rows))),
                                  size, args.repeats)
        print(f"| sample ({n} per prompt) | {size} | {size * n} | {rate:.2f} |", flush=True)
    ivg = cfg.decode_settings("ivg")
    guidance = ivg.guidance(tuned=lambda: tuned, reference=lambda: base, value=lambda: value)
    for size in (int(x) for x in args.decode_sizes.split(",")):
        chunk = pool[:size]
        rate = prompts_per_second(lambda chunk=chunk: ivg.decode(base, chunk, guidance, range(len(chunk))), size,
                                  args.repeats)
        print(f"| IVG (W,K,L = {cfg.beams},{cfg.candidates},{cfg.chunk_length}) | {size} | "
              f"{size * cfg.beams * cfg.candidates} | {rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
