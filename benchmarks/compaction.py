"""Finished-row compaction (issue 14, item 4): what a decode saves when rows that ended stop running, measured side
by side in one process on the embedded SmolLM2-135M.

A long budget where responses end at different steps: the sentiment experiment's test openings, the base template,
the stop string "\\n\\n" (and EOS), T = 0.7, `--max-new-tokens` new tokens. For each search — plain sampling (one
row per prompt), chunk-level search with the value model (W, K, L = 2, 4, 8, a copy of the base with a value
head as the value model; whole prompts leave) and plain sampling without the stop string (EOS only: the cost of
the levels when little ends early) — and each compaction depth (0 = off):

    first call      seconds, compiling included (each halving is one more compiled level)
    s / call        median of `--repeats` calls after it
    speed-up        s / call without compaction over s / call with it
    useful          the share of (row, step) pairs that produced a token: the bound on what compaction can save
    same output     whether every chosen token equals the uncompacted run's

    python benchmarks/compaction.py                       # 32 prompts, 128 new tokens, depths 0-3
    python benchmarks/compaction.py --prompts 16 --max-new-tokens 96 --depths 0,2 --repeats 1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import ivg_jax  # noqa: E402
from ivg_jax.decoding.settings import DecodeSettings  # noqa: E402
from ivg_jax.defaults import default_model_path  # noqa: E402
from ivg_jax.experiments.sentiment.pipeline import PROMPTS_DIR  # noqa: E402
from ivg_jax.model.api import attach_head  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from timing import cpu_name, timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--depths", default="0,1,2,3")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--searches", default="plain,cbs,plain-no-stop")
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    prompts = (PROMPTS_DIR / "test.txt").read_text().splitlines()[:args.prompts]
    base = ivg_jax.load_model(str(default_model_path()))
    value = attach_head(base, "value", scale=0.01, seed=2)
    common = dict(temperature=0.7, max_new_tokens=args.max_new_tokens, stop="\n\n",
                  base_template="Here is a movie review from imdb: {prompt}")
    searches = {"plain": DecodeSettings(**common),
                "cbs": DecodeSettings(chunk="explicit", beams=2, candidates=4, chunk_length=8, **common),
                # nothing ends early: what the levels cost when there is nothing to drop
                "plain-no-stop": DecodeSettings(**{**common, "stop": ""})}
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, {jax.devices()[0].platform}; SmolLM2-135M float32; "
          f"{args.prompts} prompts, {args.max_new_tokens} new tokens, stop '\\n\\n'; median of {args.repeats} "
          "after the first call")
    print("| search | rows | compaction | first call (s) | s / call | speed-up | useful | same output |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in args.searches.split(","):
        settings = searches[name]
        guidance = settings.guidance(value=lambda: value)
        reference = None
        for depth in depths:
            s = dataclasses.replace(settings, compaction=depth)
            out, first, median = timed(lambda s=s, g=guidance: s.decode(base, prompts, g, range(len(prompts))),
                                       args.repeats)
            if reference is None:
                reference = (out, median)
            rows = len(prompts) * s.beams * s.candidates
            useful = out.rows["lengths"].sum() / (rows * args.max_new_tokens)
            same = np.array_equal(out.tokens, reference[0].tokens)
            print(f"| {name} | {rows} | {depth} | {first:.1f} | {median:.2f} | {reference[1] / median:.2f}x | "
                  f"{useful:.0%} | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
