"""Which matmul library XLA:CPU should run a search with, by its number of rows (issue 14, item 2).

`generate(..., cpu_matmuls=...)` (`--cpu-matmuls` on `ivg decode`, a `DecodeSettings` field) compiles the search
with XLA:CPU's default dots (YNNPACK), oneDNN's or XLA's own Eigen dots, for that search only (jit's
`compiler_options`). The right one depends on the rows and the machine, so this script measures every choice
side by side in one process — each search compiled once per choice, then the choices called in turn, `--repeats`
rounds, median — on the embedded SmolLM2-135M (plain sampling at several row counts; IVG with a contrastive
implicit guide at one and four prompts of W·K = 16 rows) and on issue 14's GPT-2-small-shaped IVG (four random
models, W, K, L = 4, 4, 5: one prompt = 16 rows). Ratios are speed over the default.

    python benchmarks/cpu_matmuls.py [--rows 1 4 8 16 32 64 128] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
from ivg_peak import ivg_setup, make_models  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from timing import cpu_name, report  # noqa: E402

import ivg_jax  # noqa: E402
from ivg_jax.runtime import CPU_MATMULS  # noqa: E402

BASE = "Here is a movie review from imdb: {prompt}"
OPENINGS = ["The film", "Two hours of my life", "The acting", "I rented this", "The plot", "My wife and I",
            "The soundtrack", "The ending"]


def cases(rows: list[int], new_tokens: int):
    """-> [(name, rows, callable(cpu_matmuls) -> Generation)]."""
    base = ivg_jax.load_model("smollm2")
    plain = ivg_jax.Guidance(base_template=BASE)
    out = []
    for n in rows:
        prompts = (OPENINGS * (n // len(OPENINGS) + 1))[:n]
        out.append((f"SmolLM2 plain sampling, {n} prompts", n, lambda m, p=prompts: ivg_jax.generate(
            base, p, plain, sampling=ivg_jax.Sampling(0.7), max_new_tokens=new_tokens, seed=0, stop_ids=[],
            cpu_matmuls=m)))
    guide = ivg_jax.ImplicitGuide(base, base, 1.5, template="Here is a glowing movie review from imdb: {prompt}",
                                  reference_template=BASE)
    ivg = ivg_jax.Guidance(implicit=[guide], token="implicit", chunk="implicit", base_template=BASE)
    for n in (1, 4):
        out.append((f"SmolLM2 IVG-style (implicit token + chunk), {n} prompt(s), W, K, L = 4, 4, 6", 16 * n,
                    lambda m, p=OPENINGS[:n]: ivg_jax.generate(
                        base, p, ivg, ivg_jax.Search(4, 4, 6), ivg_jax.Sampling(0.7), max_new_tokens=new_tokens,
                        seed=0, stop_ids=[], cpu_matmuls=m)))
    gpt2 = make_models("float32")
    prompts, guidance, search, kw = ivg_setup(gpt2, 1, new_tokens)
    out.append(("GPT-2-small IVG (4 models), 1 prompt, W, K, L = 4, 4, 5", 16, lambda m: ivg_jax.generate(
        gpt2[0], prompts, guidance, search, **kw, cpu_matmuls=m)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    choices = list(CPU_MATMULS)
    lines = [f"# XLA:CPU matmul library per search; {cpu_name()}, {os.cpu_count()} CPUs, jax {jax.__version__}; "
             f"{args.new_tokens} new tokens, float32, "
             f"median of {args.repeats} rounds (choices alternating), compile excluded; ratio = speed over xla",
             "", "| search | rows | " + " | ".join(f"{c} s" for c in choices) + " | "
             + " | ".join(f"{c} ratio" for c in choices[1:]) + " |",
             "|---|---:|" + "---:|" * (2 * len(choices) - 1)]
    for name, n_rows, call in cases(args.rows, args.new_tokens):
        first = {c: call(c) for c in choices}  # compiles each choice's program
        same = all((first[c].tokens == first["xla"].tokens).all() for c in choices)
        times = {c: [] for c in choices}
        for _ in range(args.repeats):
            for c in choices:
                t = time.perf_counter()
                call(c)
                times[c].append(time.perf_counter() - t)
        med = {c: statistics.median(v) for c, v in times.items()}
        row = (f"| {name}{'' if same else ' (tokens differ by rounding)'} | {n_rows} | "
               + " | ".join(f"{med[c]:.2f}" for c in choices) + " | "
               + " | ".join(f"{med['xla'] / med[c]:.2f}x" for c in choices[1:]) + " |")
        lines.append(row)
        print(row, flush=True)
    report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
