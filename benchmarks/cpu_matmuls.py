"""Which matmul library XLA:CPU should run a search with, by its number of rows (issue 14, item 2).

`generate(..., cpu_matmuls=...)` (`--cpu-matmuls` on `ivg decode`, a `DecodeSettings` field) compiles the search
with XLA:CPU's default dots (YNNPACK) or XLA's own Eigen dots, for that search only (jit's `compiler_options`).
The right one depends on the rows and the machine, so this script measures every choice side by side in one
process — each search compiled once per choice, then the choices called in turn, `--repeats` rounds, median — on
the embedded SmolLM2-135M (plain sampling at several row counts; IVG with a contrastive implicit guide at one and
four prompts of W·K = 16 rows) and on issue 14's GPT-2-small-shaped IVG (four random models, W, K, L = 4, 4, 5:
one prompt = 16 rows). Ratios are speed over the default.

`--dots` measures the kernels under those choices instead: a 12-block MLP stack (GPT-2-small's 768 × 3072,
ReLU) at 1, 16 and 128 rows, float32 and bfloat16, with YNNPACK's, Eigen's and XLA's oneDNN fusions
(`--xla_cpu_use_onednn`, the oneDNN path jaxlib 0.10 runs; its `xla_cpu_experimental_onednn_custom_call` flag,
which an earlier "onednn" choice set, changes nothing in the compiled program); what one bf16 row costs a decode
program (SmolLM2 sampling one prompt: its dots run as two rows, against a second prompt run and dropped); and
whether the MLP stack with GELU compiles under oneDNN at all, as single dots and with elementwise neighbours fused
(each in a child process: it can abort).

    python benchmarks/cpu_matmuls.py [--rows 1 4 8 16 32 64 128] [--repeats 3] [--out FILE]
    python benchmarks/cpu_matmuls.py --dots [--repeats 15] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
from ivg_peak import ivg_setup, make_models  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from timing import alternating, cpu_name, report  # noqa: E402

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


# XLA's oneDNN fusions (not offered by `generate`: slower on every shape measured here, and they abort the process
# on some graphs): the flags of the oneDNN path that jaxlib 0.10 compiles, for --dots only.
ONEDNN_FUSIONS = {"xla_cpu_use_xnnpack": False, "xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_onednn": True,
                  "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def mlp_stack(rows: int, dtype: str, activation: str, blocks: int = 12, d: int = 768, hidden: int = 3072):
    """-> (fn, args, flops): `blocks` residual MLPs `x + act(x @ up) @ down` at `rows` rows, matmuls accumulating
    in float32."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    dt = jnp.dtype(dtype)
    x = jnp.asarray(rng.normal(size=(rows, d)), dt)
    ups = [jnp.asarray(rng.normal(size=(d, hidden)) * 0.02, dt) for _ in range(blocks)]
    downs = [jnp.asarray(rng.normal(size=(hidden, d)) * 0.02, dt) for _ in range(blocks)]
    act = jax.nn.gelu if activation == "gelu" else jax.nn.relu

    def fn(x, ups, downs):
        for up, down in zip(ups, downs):
            h = act(jnp.dot(x, up, preferred_element_type=jnp.float32)).astype(dt)
            x = x + jnp.dot(h, down, preferred_element_type=jnp.float32).astype(dt)
        return x

    return fn, (x, ups, downs), 4 * rows * d * hidden * blocks


def gelu_child(fusion_type: str) -> None:
    """Compiles and runs the GELU stack with oneDNN's fusions of `fusion_type` (its own process: a failure can
    abort it)."""
    fn, args, _ = mlp_stack(16, "float32", "gelu")
    options = {**ONEDNN_FUSIONS, "xla_cpu_experimental_onednn_fusion_type": fusion_type}
    jax.block_until_ready(jax.jit(fn, compiler_options=options)(*args))
    print("ran")


def one_row(repeats: int) -> list[str]:
    """SmolLM2 plain sampling of one prompt with bf16 per-layer weights, as the engine runs it (one row whose
    dots run as two, `one_row_as_two`) and as two prompts, the second a dropped copy (the way before it): XLA
    temporaries and ms per token."""
    import dataclasses

    from ivg_jax.decoding import engine

    base = ivg_jax.load_model("smollm2", dtype="bfloat16", per_layer=True)
    new_tokens, prompts = 32, OPENINGS[:1]
    call = engine.plan(base, prompts, ivg_jax.Guidance(base_template=BASE), None, ivg_jax.Sampling(0.7),
                       new_tokens, stop_ids=[])
    programs, calls = {}, {}
    for name, c in (("one row, its dots as two (default)", call),
                    ("the prompt and a dropped copy", dataclasses.replace(call, n_prompts=2))):
        inputs, _, _ = engine.encode_inputs(c, prompts, 0)
        params = engine.placed_params(c)
        compiled = engine.run.lower(c.program, params, inputs).compile()
        programs[name] = compiled.memory_analysis().temp_size_in_bytes
        jax.block_until_ready(compiled(params, inputs))
        calls[name] = (compiled, (params, inputs))
    med = alternating(calls, repeats)
    return ["", f"SmolLM2-135M plain sampling, one prompt, bfloat16 per-layer weights, {new_tokens} tokens, median of "
            f"{repeats} (alternating):", "", "| rows run | XLA temp MB | ms per token |", "|---|---:|---:|"] + [
        f"| {name} | {programs[name] / 1e6:.0f} | {med[name] / new_tokens * 1e3:.1f} |" for name in calls]


def dots(repeats: int) -> str:
    libraries = {"YNNPACK (xla)": None, "Eigen (eigen)": CPU_MATMULS["eigen"], "oneDNN fusions": ONEDNN_FUSIONS}
    lines = [f"# 12-block MLP stack 768 x 3072 (ReLU) per matmul library; {cpu_name()}, {os.cpu_count()} CPUs, "
             f"jax {jax.__version__}; median of {repeats} rounds (libraries alternating), compile excluded; "
             "GFLOP/s of the stack's matmuls", "",
             "| dtype | rows | " + " | ".join(f"{name} ms (GFLOP/s)" for name in libraries) + " |",
             "|---|---:|" + "---:|" * len(libraries)]
    for dtype in ("float32", "bfloat16"):
        for rows in (1, 16, 128):
            fn, args, flops = mlp_stack(rows, dtype, "relu")
            calls = {}
            for name, options in libraries.items():
                jitted = jax.jit(fn) if options is None else jax.jit(fn, compiler_options=options)
                jax.block_until_ready(jitted(*args))
                calls[name] = (jitted, args)
            med = alternating(calls, repeats)
            lines.append(f"| {dtype} | {rows} | " + " | ".join(
                f"{med[n] * 1e3:.1f} ({flops / med[n] / 1e9:.0f})" for n in libraries) + " |")
            print(lines[-1], flush=True)
    lines += one_row(max(3, repeats // 3))
    lines.append("")
    for fusion_type, what in (("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "single dots (the table's)"),
                              ("LIBRARY_FUSION_TYPE_DOT", "dots with their elementwise neighbours fused")):
        child = subprocess.run([sys.executable, __file__, "--gelu-child", fusion_type], capture_output=True,
                               text=True)
        last = (child.stderr.strip().splitlines() or [""])[-1]
        lines.append(f"The same stack with GELU (16 rows, float32) under oneDNN fusions of {what}: " + (
            "compiles and runs." if child.returncode == 0 else f"the process ends with exit code "
            f"{child.returncode} ({last[:120]!r})."))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=0, help="rounds (default 3; 15 with --dots)")
    ap.add_argument("--dots", action="store_true")
    ap.add_argument("--gelu-child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.gelu_child:
        return gelu_child(args.gelu_child)
    if args.dots:
        return report(dots(args.repeats or 15), args.out)
    repeats = args.repeats or 3

    choices = list(CPU_MATMULS)
    lines = [f"# XLA:CPU matmul library per search; {cpu_name()}, {os.cpu_count()} CPUs, jax {jax.__version__}; "
             f"{args.new_tokens} new tokens, float32, "
             f"median of {repeats} rounds (choices alternating), compile excluded; ratio = speed over xla",
             "", "| search | rows | " + " | ".join(f"{c} s" for c in choices) + " | "
             + " | ".join(f"{c} ratio" for c in choices[1:]) + " |",
             "|---|---:|" + "---:|" * (2 * len(choices) - 1)]
    for name, n_rows, call in cases(args.rows, args.new_tokens):
        first = {c: call(c) for c in choices}  # compiles each choice's program
        same = all((first[c].tokens == first["xla"].tokens).all() for c in choices)
        med = alternating({c: (call, (c,)) for c in choices}, repeats)
        row = (f"| {name}{'' if same else ' (tokens differ by rounding)'} | {n_rows} | "
               + " | ".join(f"{med[c]:.2f}" for c in choices) + " | "
               + " | ".join(f"{med['xla'] / med[c]:.2f}x" for c in choices[1:]) + " |")
        lines.append(row)
        print(row, flush=True)
    report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
