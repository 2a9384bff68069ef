"""Memory of a search whose rows read one copy of their prompt (issue 14, item 3), against rows that each hold a
copy, from XLA's buffer assignment of the compiled search (compile only: nothing runs, so a loaded machine
measures the same).

IVG (implicit token guidance + explicit chunk scores) with four SmolLM2-135M-shaped models of distinct random
weights (base, tuned, reference, value model), P prompts x W x K rows, N new tokens; prompts of T tokens. For
each variant:

    state MB      the decode state (every member's caches and next-token outputs, tokens, scores, keys)
    caches MB     its keys and values alone: R (T + N) slots per layer when every row holds its prompt,
                  R N + P T when a prompt's rows share one copy
    XLA MB        the program's arguments (weights, inputs) + its outputs + its temporaries, as XLA assigns them
    temp MB       the temporaries alone (the in-place beam reordering keeps this a fraction of the state)

    python benchmarks/prompt_sharing.py                        # P=16, W=K=4, L=5, N=50, T in 16 and 256
    python benchmarks/prompt_sharing.py --prompt-lengths 64 --prompts 8
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from engine_overhead import SMOLLM2_135M  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from timing import report  # noqa: E402

import ivg_jax  # noqa: E402
from ivg_jax.decoding import engine  # noqa: E402

MB = 2 ** 20


def _bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def measure(call, prompts) -> dict:
    inputs, _, _ = engine.encode_inputs(call, prompts, 0)
    params = engine.placed_params(call)
    state = jax.eval_shape(lambda: engine.init_state(call.program, params, inputs))
    # a fresh function per variant: jit's trace cache must not hand back the other variant's program
    compiled = jax.jit(lambda p, i: engine.run.__wrapped__(call.program, p, i)).lower(params, inputs).compile()
    mem = compiled.memory_analysis()
    return dict(state_mb=_bytes(state) / MB, caches_mb=(_bytes(state.caches) + _bytes(state.trunk_caches)) / MB,
                weights_mb=_bytes(params) / MB,
                xla_mb=(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                        - mem.alias_size_in_bytes) / MB,
                temp_mb=mem.temp_size_in_bytes / MB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-lengths", nargs="*", type=int, default=[16, 256])
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/results/prompt_sharing_cpu.md")
    args = ap.parse_args()
    base, tuned, reference = (ivg_jax.init_model(SMOLLM2_135M, seed=s) for s in range(3))
    value = ivg_jax.init_model(SMOLLM2_135M.replace(head="value"), seed=3)
    guidance = ivg_jax.Guidance(implicit=[ivg_jax.ImplicitGuide(tuned, reference, 1.0)],
                                explicit=ivg_jax.ExplicitGuide(value, 1.0), token="implicit", chunk="explicit")
    search = ivg_jax.Search(args.beams, args.candidates, args.chunk)
    rows = engine.prompt_bucket(args.prompts) * search.rows_per_prompt
    lines = [f"Prompt sharing, IVG with four SmolLM2-135M-shaped models (fp32), {args.prompts} prompts x "
             f"W={args.beams} x K={args.candidates} = {rows} rows, {args.new_tokens} new tokens; "
             f"XLA's buffer assignment on "
             f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs).", "",
             "| prompt tokens | rows hold | caches MB | state MB | weights MB | XLA MB (args + outputs + temp) | "
             "temp MB | XLA / (weights + state) |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    rng = np.random.default_rng(0)
    for length in args.prompt_lengths:
        prompts = [rng.integers(100, 40000, size=length).tolist() for _ in range(args.prompts)]
        call = engine.plan(base, prompts, guidance, search, ivg_jax.Sampling(0.7), args.new_tokens, stop_ids=[])
        copies = dataclasses.replace(call, program=dataclasses.replace(call.program, prompt_sharing=False))
        for label, variant in (("a copy each", copies), ("one shared copy", call)):
            m = measure(variant, prompts)
            ratio = m["xla_mb"] / (m["weights_mb"] + m["state_mb"])
            lines.append(f"| {length} | {label} | {m['caches_mb']:.0f} | {m['state_mb']:.0f} | {m['weights_mb']:.0f} "
                         f"| {m['xla_mb']:.0f} | {m['temp_mb']:.0f} | {ratio:.2f} |")
            print(lines[-1], flush=True)
    report("\n" + "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
