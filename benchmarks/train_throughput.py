"""Training throughput and peak memory of SmolLM2-sized DPO and FUDGE steps: full fine-tuning vs top-N blocks.

Each configuration runs in its own process (so its peak RSS is its own): the embedded SmolLM2-135M-Instruct in
float32, the library's jitted train step (`ivg_jax.training.steps.build_steps`, AdamW + clipping), one batch of
B sequences (DPO: B/2 pairs) x T tokens. Reported: median step time over the timed steps, tokens/s, compile time,
XLA's temp buffer size for the step, and the process's peak resident memory; ratios top-N / full side by side.

    python benchmarks/train_throughput.py                 # B=16 rows (8 DPO pairs), T=64, top-N = 2 of 30 blocks
    python benchmarks/train_throughput.py --rows 8 --steps 3 --top 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def child(objective: str, top: int | None, rows: int, length: int, steps: int) -> dict:
    from ivg_jax.runtime import tune_cpu

    tune_cpu()
    import jax
    import numpy as np
    import optax

    import ivg_jax
    from ivg_jax.defaults import default_model_path
    from ivg_jax.model.api import attach_head
    from ivg_jax.training.optim import OptimConfig, make_optimizer
    from ivg_jax.training.steps import Objective, build_steps, frozen_layer_count, split_params

    model = ivg_jax.load_model(default_model_path())
    if objective == "fudge":
        model = attach_head(model, "value")
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    frozen_layers = frozen_layer_count(model.config.n_layers, top)
    trainable, frozen = split_params(model.params, frozen_layers)
    n_trainable = sum(x.size for x in jax.tree.leaves(trainable))
    fns = build_steps(Objective(objective), model.graphdef, make_optimizer(OptimConfig(), 100), frozen_layers)
    state = fns.init(trainable)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.config.vocab_size, (rows, length)).astype(np.int32)
    loss_mask = np.zeros((rows, length), bool)
    loss_mask[:, length // 4:] = True  # the first quarter is the prompt
    batch = {"tokens": tokens, "mask": np.ones((rows, length), bool), "loss_mask": loss_mask,
             "reward": rng.standard_normal(rows // (2 if objective == "dpo" else 1)).astype(np.float32)}
    if objective == "dpo":
        batch["ref_logprobs"] = rng.standard_normal(rows).astype(np.float32) - 300
    batch = fns.batch_sharding(batch)
    t0 = time.perf_counter()
    compiled = fns.train.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    temp_mb = getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory is not None else float("nan")
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready(metrics["loss"])
        if i:  # the first call pays one-off allocation
            times.append(time.perf_counter() - t)
    del optax
    step_s = statistics.median(times)
    return {"objective": objective, "top": top, "rows": rows, "length": length, "step_s": step_s,
            "tokens_per_s": rows * length / step_s, "compile_s": compile_s, "xla_temp_mb": temp_mb,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
            "rss_after_load_mb": rss_loaded * 2**10, "trainable_params": int(n_trainable),
            "loss": float(metrics["loss"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16, help="sequences per step (DPO: 2 per pair)")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--top", type=int, default=2, help="N of the top-N-block configurations")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        objective, top = args.child.split(":")
        print("RESULT " + json.dumps(child(objective, int(top) or None, args.rows, args.length, args.steps)))
        return
    rows = []
    for objective in ("dpo", "fudge"):
        for top in (0, args.top):
            cmd = [sys.executable, __file__, "--child", f"{objective}:{top}", "--rows", str(args.rows),
                   "--length", str(args.length), "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:]))
            r = rows[-1]
            print(f"{objective:5s} {'full' if not top else f'top-{top}':7s} {r['step_s']:.2f} s/step "
                  f"{r['tokens_per_s']:.0f} tok/s  peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    lines = [f"# Training throughput, SmolLM2-135M-Instruct float32, {args.rows} rows x {args.length} tokens per "
             f"step ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)", "",
             "| objective | trained | trainable params | step (s, median) | tokens/s | speed vs full | compile (s) "
             "| XLA temp (MB) | peak RSS (MB) | RSS vs full |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        full = next(x for x in rows if x["objective"] == r["objective"] and not x["top"])
        trained = "all blocks" if not r["top"] else f"top {r['top']} blocks"
        lines.append(f"| {r['objective']} | {trained} "
                     f"| {r['trainable_params'] / 1e6:.1f} M | {r['step_s']:.2f} | {r['tokens_per_s']:.0f} "
                     f"| {full['step_s'] / r['step_s']:.2f}x | {r['compile_s']:.1f} | {r['xla_temp_mb']:.0f} "
                     f"| {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / full['peak_rss_mb']:.2f}x |")
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "train_throughput_cpu.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(RESULTS, "train_throughput_cpu.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
