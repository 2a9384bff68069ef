"""What reading the value model at sampled tokens only saves (issue 14, item 2), measured side by side.

Where the value model scores chunks (CBS explicit, IVG, best-of-N) its output is read at one token per row and
step: the engine then keeps its final hidden state and reads one column of its value head per row
(`Program.values_at_tokens`, `Transformer.head_at`) instead of projecting the whole vocabulary. This script runs
the same compiled search with and without that projection (`Program(value_columns=False)`), alternating, and
prints the medians, the speed-up and the compiled token step's FLOPs (loops unrolled for counting).

Models as in the main job: the embedded SmolLM2-135M-Instruct as base and reference, a tuned model and a value
model (value head) whose top 2 blocks differ from the base's, as top-2 training leaves them (so they share a
trunk with the reference).

    python benchmarks/value_columns.py                          # the fast preset's shapes, 8 prompts
    python benchmarks/value_columns.py --prompts 40 --repeats 3 # the main job's decode batch
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
from shared_trunk import retrained  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from timing import alternating, cpu_name, report  # noqa: E402

import ivg_jax  # noqa: E402
from ivg_jax.decoding import engine  # noqa: E402
from ivg_jax.decoding.step_cost import token_step_cost  # noqa: E402
from ivg_jax.defaults import default_model_path  # noqa: E402
from ivg_jax.experiments.sentiment.pipeline import PRESETS, SentimentConfig, load_prompts  # noqa: E402
from ivg_jax.model.api import attach_head  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--methods", default="bon,cbs_explicit,ivg")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    cfg = SentimentConfig(run_dir="unused", **{**PRESETS["fast"], "max_new_tokens": args.max_new_tokens})
    base = ivg_jax.load_model(str(default_model_path()), dtype=args.dtype)
    tuned = retrained(base, 2, 1)
    value = retrained(attach_head(base, "value", scale=0.01, seed=2), 2, 3)
    prompts = load_prompts(cfg, "test")[:args.prompts]
    lines = [f"{cpu_name()} ({os.cpu_count()} CPUs), {jax.devices()[0].platform}; "
             f"SmolLM2-135M base/reference ({args.dtype}), guides differing in their top 2 blocks; "
             f"{len(prompts)} prompts, {args.max_new_tokens} new tokens, W,K,L = {cfg.beams},{cfg.candidates},"
             f"{cfg.chunk_length}, best-of-{cfg.bon_n}; median of {args.repeats}, alternating", "",
             "| method | rows | s/call value columns | s/call whole projection | speed-up "
             "| step GFLOP columns / projection |", "|---|---:|---:|---:|---:|---:|"]
    for method in args.methods.split(","):
        settings = cfg.decode_settings(method)
        guidance = settings.guidance(tuned=lambda: tuned, reference=lambda: base, value=lambda: value)
        call = engine.plan(base, prompts, guidance, settings.search, settings.sampling, settings.max_new_tokens,
                           settings.stop_strings)
        programs = {True: call.program, False: dataclasses.replace(call.program, value_columns=False)}
        assert programs[True].values_at_tokens, method
        inputs, _, _ = engine.encode_inputs(call, prompts, 0)
        params = engine.placed_params(call)
        for program in programs.values():  # compile both first
            jax.block_until_ready(engine.run(program, params, inputs))
        med = alternating({columns: (engine.run, (program, params, inputs))
                           for columns, program in programs.items()}, args.repeats)
        flops = {k: token_step_cost(p, params, inputs)["flops"] / 1e9 for k, p in programs.items()}
        lines.append(f"| {method} | {call.program.width * inputs.seeds.shape[0]} | {med[True]:.2f} | "
                     f"{med[False]:.2f} | {med[False] / med[True]:.2f}x | {flops[True]:.2f} / {flops[False]:.2f} |")
        print(lines[-1], flush=True)
    report("\n" + "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
