"""Plain decoding of SmolLM2-135M with its blocks as a scan over stacked weights vs one block after another on
per-layer weights (issue 14), alternating in one process: the per-layer weights are made once, before timing
(`Model.with_layout`, what `load_model(per_layer=True)` loads), so this measures the loops themselves. Greedy,
no early stop; tok/s end to end (prefill included), median of --repeats after a compiling call.

    python benchmarks/layer_loops.py [--batches 1 16 64] [--dtypes float32 bfloat16] [--new-tokens 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402

from ivg_jax.defaults import default_model_path  # noqa: E402
from ivg_jax.loading import load_model  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from decode_throughput import prompts, time_complete  # noqa: E402
from timing import report  # noqa: E402


def tok_per_s(model, batch: int, new_tokens: int, repeats: int) -> tuple[float, float, object]:
    first, seconds, out = time_complete(model, prompts(batch), new_tokens, repeats)
    return batch * new_tokens / seconds, first, out.tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--new-tokens", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    lines = ["| dtype | batch | tok/s scan | tok/s unrolled | unrolled / scan | first call s scan / unrolled | "
             "same tokens |", "|---|---:|---:|---:|---:|---:|---|"]
    for dtype in args.dtypes:
        model = load_model(default_model_path(), dtype=dtype)
        unrolled = model.with_layout(per_layer=True)
        for batch in args.batches:
            scan_rate, scan_first, scan_tokens = tok_per_s(model, batch, args.new_tokens, args.repeats)
            rate, first, tokens = tok_per_s(unrolled, batch, args.new_tokens, args.repeats)
            lines.append(f"| {dtype} | {batch} | {scan_rate:.1f} | {rate:.1f} | {rate / scan_rate:.2f}x | "
                         f"{scan_first:.1f} / {first:.1f} | {bool((scan_tokens == tokens).all())} |")
            print(lines[-1], flush=True)
        del model, unrolled
    text = (f"SmolLM2-135M-Instruct (the embedded GGUF), greedy, {args.new_tokens} new tokens, median of "
            f"{args.repeats}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{jax.devices()[0].device_kind}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}\n\n" + "\n".join(lines))
    report(text, args.out)


if __name__ == "__main__":
    main()
