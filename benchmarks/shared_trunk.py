"""What shared trunks save in the sentiment experiment's setting (issue 14, item 3), measured side by side.

Models: the embedded SmolLM2-135M-Instruct as the base and the reference, and two guides made as top-N-block
training leaves them — a "tuned" model and a token value model (value head) whose top `--top-blocks` blocks
differ from the base (perturbed here; training changes exactly those) and whose embedding and other blocks are
the base's, bit for bit. The guides read the guide template, the base its own (as in the main job), so the
group tuned + reference + value shares the bottom blocks and the base runs alone.

For each method (EFT, CBS explicit, IVG) the same call runs with sharing (the engine's default) and with it
switched off, alternating, and the script prints the medians, the ratio, the compiled step's FLOPs (loops
unrolled for counting) and the time `plan` spends finding the trunks.

    python benchmarks/shared_trunk.py                      # the fast preset's shapes: W,K,L = 2,4,6, 24 tokens
    python benchmarks/shared_trunk.py --prompts 8 --repeats 3 --max-new-tokens 24
"""

from __future__ import annotations

import argparse
import time

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from timing import alternating, cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import ivg_jax  # noqa: E402
from ivg_jax.decoding import engine  # noqa: E402
from ivg_jax.decoding.step_cost import token_step_cost  # noqa: E402
from ivg_jax.defaults import default_model_path  # noqa: E402
from ivg_jax.experiments.sentiment.pipeline import PRESETS, SentimentConfig, load_prompts  # noqa: E402
from ivg_jax.model.api import attach_head  # noqa: E402


def retrained(model, top_blocks: int, seed: int):
    """The model with its top blocks changed and everything below them untouched."""
    n = model.config.n_layers - top_blocks
    key = jax.random.key(seed)
    blocks = jax.tree.map(lambda a: a.at[n:].add((0.01 * jax.random.normal(key, a[n:].shape)).astype(a.dtype)),
                          model.params["blocks"])
    return model.with_params({**model.params, "blocks": blocks})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--top-blocks", type=int, default=2)
    ap.add_argument("--methods", default="eft,cbs_explicit,ivg")
    args = ap.parse_args()

    cfg = SentimentConfig(run_dir="unused", **{**PRESETS["fast"], "max_new_tokens": args.max_new_tokens})
    base = ivg_jax.load_model(str(default_model_path()))
    tuned = retrained(base, args.top_blocks, 1)
    value = retrained(attach_head(base, "value", scale=0.01, seed=2), args.top_blocks, 3)
    prompts = load_prompts(cfg, "test")[:args.prompts]
    print(f"# {cpu_name()}, {jax.device_count()} x {jax.devices()[0].platform}; "
          f"SmolLM2-135M base/reference, guides differing in their top {args.top_blocks} blocks; {len(prompts)} "
          f"prompts, {args.max_new_tokens} new tokens, W,K,L = {cfg.beams},{cfg.candidates},{cfg.chunk_length}")
    print("| method | trunk | s/call shared | s/call alone | speed-up | step GFLOP shared / alone | plan s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    find_trunks = engine.shared_trunks
    for method in args.methods.split(","):
        settings = cfg.decode_settings(method)
        guidance = settings.guidance(tuned=lambda: tuned, reference=lambda: base, value=lambda: value)
        seeds = list(range(len(prompts)))
        t = time.perf_counter()
        call = engine.plan(base, prompts, guidance, settings.search, settings.sampling, settings.max_new_tokens,
                           settings.stop_strings)
        plan_s = time.perf_counter() - t
        trunks = ", ".join(f"{len(tr.members)} members x {tr.n_layers} blocks" for tr in call.program.trunks)
        captured = {}
        run = engine.run

        def capture(program, params, inputs, captured=captured, run=run):
            captured[bool(program.trunks)] = (program, params, inputs)
            return run(program, params, inputs)

        def decode(shared, settings=settings, guidance=guidance, seeds=seeds):
            engine.shared_trunks = find_trunks if shared else (lambda *a: ())
            return settings.decode(base, prompts, guidance, seeds)

        try:
            engine.run = capture
            for shared in (True, False):  # compile both, capture their inputs
                decode(shared)
            engine.run = run
            med = alternating({shared: (decode, (shared,)) for shared in (True, False)}, args.repeats)
        finally:
            engine.run, engine.shared_trunks = run, find_trunks
        flops = {k: token_step_cost(*captured[k])["flops"] / 1e9 for k in captured}
        print(f"| {method} | {trunks or 'none'} | {med[True]:.2f} | {med[False]:.2f} | "
              f"{med[False] / med[True]:.2f}x | {flops.get(True, np.nan):.2f} / {flops[False]:.2f} | "
              f"{plan_s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
