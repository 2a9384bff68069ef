"""What guidance and search cost beyond the models themselves, for every cell of the spec's grid.

A SmolLM2-135M base, two SmolLM2-sized implicit guides (tuned, reference) and a SmolLM2-sized value model
(distinct weight copies, so memory is real). For each cell: the engine's wall time per generated token against
the sum of the standalone per-step times of exactly the models that cell runs, at the same row count, measured
in the same process (overhead = engine / models; goal <= 1.15x). Also compile time per configuration, memory
(XLA's buffer assignment for the program vs weights + caches predicted by hand) and, for IVG, how time per token
grows with prompts per batch, W*K and new tokens (plot).

    python benchmarks/engine_overhead.py                       # CPU-sized: 1 prompt, W=K=4, L=5, 50 tokens
    python benchmarks/engine_overhead.py --prompts 16 --scaling  # the issue's full size (for a GPU)
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ivg_jax  # noqa: E402
from ivg_jax.decoding import engine  # noqa: E402
from ivg_jax.decoding.prompts import encode  # noqa: E402
from ivg_jax.defaults import default_model_path  # noqa: E402
from ivg_jax.guidance import n_chunks  # noqa: E402
from ivg_jax.model import extend, prefill  # noqa: E402

PROMPT = "Here is a movie review from imdb: {}"
OPENINGS = ["I went in expecting little", "The acting in this film", "Two hours of my life", "A quiet story about",
            "This is the worst", "From the first scene", "My kids loved", "The director clearly"]


# SmolLM2-135M-Instruct's architecture (as read from its GGUF by ivg_jax.config.config_from_gguf).
SMOLLM2_135M = ivg_jax.ModelConfig(
    family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, d_ff=1536,
    norm_eps=1e-5, max_positions=8192, rope_theta=100000.0, tie_embeddings=True, bos_token_id=1,
    eos_token_ids=(2,), pad_token_id=2)


def make_prompts(n, model):
    texts = [OPENINGS[i % len(OPENINGS)] for i in range(n)]
    if model.tokenizer is not None:
        return texts
    rng = np.random.default_rng(0)  # token-id prompts of the lengths the templated texts have
    return [rng.integers(100, 40000, size=12 + i % 5).tolist() for i in range(n)]


def copy_model(model, head="lm"):
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), model.params)
    if head == "value":  # a value head initialised from the LM head (FUDGE-style), on the same backbone
        params["value_head"] = jnp.array(params["embed"].T, copy=True)
        cfg = model.config.replace(head="value")
        graphdef, _ = ivg_jax.model.api.abstract_model(cfg, model.dtype)
        return ivg_jax.Model(cfg, graphdef, params, model.tokenizer, source="value-copy")
    return model.with_params(params)


def timed(fn, repeats):
    def run():  # a Generation holds numpy results already; arrays are waited for
        out = fn()
        return jax.block_until_ready(getattr(out, "tokens", out))

    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@functools.partial(jax.jit, static_argnames=("graphdef", "width", "n_steps"))
def _model_alone(graphdef, params, ids, mask, width: int, n_steps: int):
    """One model's share of a decode: prefill the prompts once, broadcast to `width` rows each, then a compiled
    loop of `n_steps` single-token steps (greedy feedback, no guidance, no selection)."""
    out, cache = prefill(graphdef, params, ids, mask, capacity=ids.shape[1] + n_steps, last_only=True)
    rows = jnp.repeat(jnp.arange(ids.shape[0]), width)
    cache, out = cache.take(rows), jnp.take(out, rows, axis=0)

    def body(carry, _):
        out, cache = carry
        token = jnp.argmax(out, axis=-1).astype(jnp.int32)
        out, cache = extend(graphdef, params, token[:, None], jnp.ones((token.shape[0], 1), bool), cache)
        return (out[:, 0], cache), None

    (out, _), _ = jax.lax.scan(body, (out, cache), None, length=n_steps)
    return out


def model_alone_seconds(model, prompts, template, width, n_steps, repeats):
    ids, mask = encode(model.tokenizer, prompts, template, pad_id=model.config.pad_token_id or 0)
    ids, mask = engine._pad_rows(ids, engine.prompt_bucket(len(prompts))), \
        engine._pad_rows(mask, engine.prompt_bucket(len(prompts)))
    return timed(lambda: _model_alone(model.graphdef, model.params, ids, mask, width, n_steps), repeats)


def cells(models, width_search):
    base, tuned0, ref0, tuned1, ref1, value = models
    template = PROMPT.format("{prompt}") if base.tokenizer is not None else "{prompt}"
    implicit = [ivg_jax.ImplicitGuide(tuned0, ref0, 1.0), ivg_jax.ImplicitGuide(tuned1, ref1, 0.5)]
    explicit = ivg_jax.ExplicitGuide(value, 1.0)
    plain = ivg_jax.Search(1, 1)
    out = []
    for token in ("none", "implicit", "explicit"):
        for chunk in ("none", "implicit", "explicit"):
            search = plain if chunk == "none" else width_search
            out.append((f"token={token}, chunk={chunk}", ivg_jax.Guidance(implicit, explicit, token, chunk,
                                                                           base_template=template), search))
    n = width_search.rows_per_prompt
    out.append((f"best-of-{n} (explicit)", ivg_jax.Guidance(implicit, explicit, "none", "explicit",
                                                             base_template=template),
                ivg_jax.best_of_n(n)))
    return out


def models_of(base, prompts, guidance, search):
    return len(engine.plan(base, prompts, guidance, search).models)


def predicted_bytes(models_used, rows, capacity, cfg, vocab, itemsize=4):
    weights = sum(sum(x.nbytes for x in jax.tree.leaves(m.params)) for m in models_used)
    cache = rows * cfg.n_layers * 2 * cfg.n_kv_heads * capacity * cfg.head_dim * itemsize * len(models_used)
    outputs = rows * vocab * 4 * len(models_used)
    return weights, cache + outputs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model", choices=["default", "random"], default="default",
                    help="default: the embedded SmolLM2 GGUF; random: SmolLM2-135M shapes with random weights and "
                         "token-id prompts (same cost; for machines without the GGUF, e.g. the lent GPU)")
    ap.add_argument("--scaling", action="store_true", help="also measure IVG scaling and plot it")
    ap.add_argument("--cells", nargs="*", default=None,
                    help="only these cells, by name prefix (e.g. 'token=implicit, chunk=explicit'); default all")
    ap.add_argument("--tag", default=None, help="suffix of the result files (default: cpu or gpu)")
    ap.add_argument("--out", default="benchmarks/results", help="directory for the table, JSON and plot")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    if args.model == "default":
        base = ivg_jax.load_model(default_model_path(), dtype=args.dtype)
    else:
        base = ivg_jax.init_model(SMOLLM2_135M, seed=0, dtype=jnp.dtype(args.dtype))
    models = [base, copy_model(base), copy_model(base), copy_model(base), copy_model(base),
              copy_model(base, head="value")]
    prompts = make_prompts(args.prompts, base)
    search = ivg_jax.Search(args.beams, args.candidates, args.chunk)
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()}" if jax.default_backend() != "cpu" else \
        f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    common = dict(sampling=ivg_jax.Sampling(0.7), max_new_tokens=args.new_tokens, seed=0, stop_ids=[])

    alone = {}  # (width, steps) -> one model's prefill + decode loop seconds (every model is SmolLM2-sized)

    def model_seconds(width, n_steps):
        if (width, n_steps) not in alone:
            template = PROMPT.format("{prompt}") if base.tokenizer is not None else "{prompt}"
            alone[(width, n_steps)] = model_alone_seconds(base, prompts, template, width, n_steps, args.repeats + 1)
        return alone[(width, n_steps)]

    results = []
    for name, guidance, s in cells(models, search):
        if args.cells and not any(name.startswith(c) for c in args.cells):
            continue
        p_rows = engine.prompt_bucket(len(prompts)) * s.rows_per_prompt
        n_models = models_of(base, prompts, guidance, s)
        t0 = time.perf_counter()
        out = ivg_jax.generate(base, prompts, guidance, s, **common)
        first = time.perf_counter() - t0
        total = timed(functools.partial(ivg_jax.generate, base, prompts, guidance, s, **common), args.repeats)
        per_token = total / args.new_tokens
        n_steps = math.prod(n_chunks(s, args.new_tokens))
        models_only = n_models * model_seconds(s.rows_per_prompt, n_steps) / args.new_tokens
        row = dict(cell=name, models=n_models, rows=p_rows, seconds=total, per_token_ms=1000 * per_token,
                   models_ms=1000 * models_only, overhead=per_token / models_only, compile_s=first - total,
                   forward_tokens=out.forward_tokens)
        results.append(row)
        print(json.dumps(row), flush=True)

    # memory of the largest configuration (IVG), predicted vs XLA's buffer assignment
    ivg = next(g for n, g, s in cells(models, search) if n == "token=implicit, chunk=explicit")
    used = list(engine.plan(base, prompts, ivg, search).models)
    rows = engine.prompt_bucket(len(prompts)) * search.rows_per_prompt
    capacity = 16 + math.ceil(args.new_tokens / args.chunk) * args.chunk
    w_bytes, state_bytes = predicted_bytes(used, rows, capacity, base.config, base.config.vocab_size)
    memory = dict(predicted_weights_mb=w_bytes / 2**20, predicted_state_mb=state_bytes / 2**20)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        memory["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    else:  # CPU: device memory is host memory; the process peak also holds the tokenizer and Python
        import resource

        memory["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    scaling = []
    if args.scaling:
        for label, n_prompts, w, k, n_new in (
                [("prompts", p, args.beams, args.candidates, args.new_tokens) for p in (1, 2, 4, 8, 16)]
                + [("W*K", args.prompts, w, k, args.new_tokens) for w, k in ((1, 1), (2, 2), (4, 4), (4, 8))]
                + [("new tokens", args.prompts, args.beams, args.candidates, n) for n in (10, 25, 50, 100)]):
            ps = make_prompts(n_prompts, base)
            s = ivg_jax.Search(w, k, args.chunk)
            kw = dict(common, max_new_tokens=n_new)
            t = timed(functools.partial(ivg_jax.generate, base, ps, ivg, s, **kw), 1)
            scaling.append(dict(axis=label, prompts=n_prompts, wk=w * k, new_tokens=n_new, seconds=t,
                                per_token_ms=1000 * t / n_new, per_row_token_ms=1000 * t / n_new / (n_prompts * w * k)))
            print(json.dumps(scaling[-1]), flush=True)

    lines = [f"Engine overhead, {device}, SmolLM2-135M x6 ({args.dtype}); {args.prompts} prompts, W={args.beams}, "
             f"K={args.candidates}, L={args.chunk}, {args.new_tokens} new tokens, T=0.7, median of {args.repeats}.",
             "", "| cell | models | rows | ms / token | models alone ms / token | overhead | compile s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['cell']} | {r['models']} | {r['rows']} | {r['per_token_ms']:.1f} | {r['models_ms']:.1f} | "
                     f"{r['overhead']:.2f}x | {r['compile_s']:.1f} |")
    lines += ["", "Memory (IVG cell): " + ", ".join(f"{k} {v:.0f}" for k, v in memory.items())]
    table = "\n".join(lines)
    print("\n" + table)
    tag = args.tag or ("gpu" if jax.default_backend() != "cpu" else "cpu")
    with open(os.path.join(args.out, f"engine_overhead_{tag}.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, f"engine_overhead_{tag}.json"), "w") as f:
        json.dump(dict(device=device, results=results, memory=memory, scaling=scaling), f, indent=1)
    if scaling:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for ax, (axis, key) in zip(axes, (("prompts", "prompts"), ("W*K", "wk"), ("new tokens", "new_tokens"))):
            pts = [s for s in scaling if s["axis"] == axis]
            ax.plot([p[key] for p in pts], [p["per_token_ms"] for p in pts], "o-", label="ms / generated token")
            ax.plot([p[key] for p in pts], [p["per_row_token_ms"] for p in pts], "s--", label="ms / row-token")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(axis)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(f"IVG (implicit token + explicit chunk) cost vs work, {device}")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, f"engine_scaling_{tag}.png"), dpi=110)


if __name__ == "__main__":
    sys.exit(main())
