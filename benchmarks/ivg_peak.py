"""IVG at GPT-2-small shapes against this machine's matmul peak, and where a token step's time goes (issue 14).

Models (random init, distinct weight copies): a GPT-2-small base, tuned and reference (124M each) and a token
value model (GPT-2-small backbone with an untied vocab-sized value head, 163M). IVG = implicit token guidance +
explicit chunk scores, W, K, L = 4, 4, 5, 50 new tokens, no early stop. For each dtype and prompt count:

    s/prompt      generate's wall time per prompt (median of --repeats, after compiling)
    step GFLOP    XLA's cost_analysis() of one compiled token step (four models + guidance + sampling)
    GFLOP/s       step GFLOP x steps / wall time
    % of peak     that rate over this machine's matmul peak, measured in the same run (best jnp.dot rate of a
                  2048^3 matmul in the same dtype; 8192^3 on a GPU/TPU)
    % of roofline that rate over min(peak, read bandwidth x the step's FLOP per byte accessed): at 16 rows a
                  decode step streams all four models' weights for 16 tokens and is bandwidth-bound

and a per-part split of one token step at the same rows, each part jitted and timed alone: the four models'
forward steps (blocks and vocab projection), the vocab projections alone, guidance (log-softmaxes, the
guided distribution, KL) and sampling.

    python benchmarks/ivg_peak.py                       # fp32 and bf16, 1 and 8 prompts
    python benchmarks/ivg_peak.py --dtypes float32 --prompts 1 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from ivg_jax.runtime import tune_cpu

tune_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from timing import report, timed  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import ivg_jax  # noqa: E402
from ivg_jax.decoding import engine  # noqa: E402
from ivg_jax.decoding.sampling import sample, step_keys  # noqa: E402
from ivg_jax.decoding.step_cost import token_step_cost  # noqa: E402
from ivg_jax.model.transformer import unstack_blocks  # noqa: E402

GPT2_SMALL = ivg_jax.ModelConfig(
    family="gpt2", vocab_size=50257, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, head_dim=64, d_ff=3072,
    norm="layer", mlp="gelu", activation="gelu_new", attn_bias=True, attn_out_bias=True, mlp_bias=True,
    positions="learned", max_positions=1024, tie_embeddings=True, pad_token_id=50256, eos_token_ids=(50256,))


def median_seconds(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn` after a compiling / warming one."""
    return timed(lambda: jax.block_until_ready(fn()), repeats)[2]


def matmul_peak(dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n x n jnp.dot in `dtype` (f32 accumulation), jitted."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    jax.block_until_ready(dot(a, a))
    best = min(_once(lambda: dot(a, a)) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def read_bandwidth(repeats: int = 5) -> float:
    """Best GB/s of summing a 1 GiB float32 array: the rate at which a step can stream its weights."""
    a = jnp.ones((2 ** 28,), jnp.float32)
    total = jax.jit(jnp.sum)
    jax.block_until_ready(total(a))
    return a.nbytes / min(_once(lambda: total(a)) for _ in range(repeats)) / 1e9


def _once(fn) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def cost_of(compiled) -> dict:
    cost = compiled.cost_analysis()
    return cost[0] if isinstance(cost, list) else cost


def flops_of(compiled) -> float:
    return float(cost_of(compiled).get("flops", float("nan")))


def make_models(dtype):
    base = ivg_jax.init_model(GPT2_SMALL, 0, dtype=dtype)
    tuned = ivg_jax.init_model(GPT2_SMALL, 1, dtype=dtype)
    ref = ivg_jax.init_model(GPT2_SMALL, 2, dtype=dtype)
    value = ivg_jax.init_model(GPT2_SMALL.replace(head="value", tie_embeddings=False), 3, dtype=dtype)
    return base, tuned, ref, value


def ivg_setup(models, n_prompts: int, new_tokens: int):
    base, tuned, ref, value = models
    rng = np.random.default_rng(0)
    prompts = [rng.integers(100, 50000, size=12 + i % 5).tolist() for i in range(n_prompts)]
    guidance = ivg_jax.Guidance([ivg_jax.ImplicitGuide(tuned, ref, 1.0)], ivg_jax.ExplicitGuide(value, 1.0),
                                token="implicit", chunk="explicit")
    search = ivg_jax.Search(4, 4, 5)
    kw = dict(sampling=ivg_jax.Sampling(0.7), max_new_tokens=new_tokens, stop_ids=[])
    return prompts, guidance, search, kw


def step_parts(models, call, params, inputs):
    """Seconds of one token step and of its parts, at the program's rows, each jitted and timed alone."""
    program = call.program
    state = engine.init_state(program, params, inputs)
    rows = jnp.repeat(jnp.arange(inputs.w_explicit.shape[0]), program.width)
    w_imp, w_exp = jnp.take(inputs.w_implicit, rows, axis=0), jnp.take(inputs.w_explicit, rows, axis=0)
    n_rows = rows.shape[0]

    # Arrays are arguments or small: a jitted closure embeds what it closes over in the executable as constants.
    whole = jax.jit(lambda p, s: engine._token_step(program, p, w_imp, w_exp, inputs.stops, s))
    compiled = whole.lower(params, state).compile()
    cost = token_step_cost(program, params, inputs, state)
    out = {"rows": int(n_rows), "step_gflop": cost["flops"] / 1e9, "step_gbytes": cost["bytes"] / 1e9,
           "step_s": median_seconds(lambda: compiled(params, state), 5)}

    token = jnp.zeros((n_rows, 1), jnp.int32)
    active = jnp.ones((n_rows, 1), bool)
    def models_step(p, caches):  # every member's extend: blocks and vocab projection
        return [ivg_jax.model.extend(g, pp, token, active, c)[0] for g, pp, c in zip(program.graphdefs, p, caches)]

    models_fn = jax.jit(models_step)
    out["models_s"] = median_seconds(lambda: models_fn(params, state.caches), 5)

    def heads(p):
        x = jnp.ones((n_rows, GPT2_SMALL.d_model), jax.tree.leaves(p.base)[0].dtype)
        return [jnp.einsum("bd,vd->bv", x, pp["embed"], preferred_element_type=jnp.float32) if "value_head" not in pp
                else jnp.dot(x, pp["value_head"], preferred_element_type=jnp.float32) for pp in p]

    heads_fn = jax.jit(heads)
    out["vocab_heads_s"] = median_seconds(lambda: heads_fn(params), 5)

    def guidance(outputs):
        base, guided, _ = engine._guided_logprobs(program, outputs, w_imp, w_exp)
        t = engine._log_softmax(guided / 0.7)
        b = engine._log_softmax(base / 0.7)
        return guided, jnp.sum(jnp.exp(t) * (t - b), axis=-1)

    guidance_fn = jax.jit(guidance)
    out["guidance_s"] = median_seconds(lambda: guidance_fn(state.outputs), 5)
    guided = guidance_fn(state.outputs)[0]
    sample_fn = jax.jit(lambda k, g: sample(step_keys(k, jnp.int32(0)), g, program.sampling))
    out["sampling_s"] = median_seconds(lambda: sample_fn(state.keys, guided), 5)
    return out


def run_case(models, dtype_name: str, n_prompts: int, new_tokens: int, repeats: int, peak: float,
             bandwidth: float, unroll: bool) -> dict:
    base = models[0]
    prompts, guidance, search, kw = ivg_setup(models, n_prompts, new_tokens)
    kw["unroll_layers"] = unroll
    _, first, seconds = timed(lambda: ivg_jax.generate(base, prompts, guidance, search, **kw).tokens, repeats)
    call = engine.plan(base, prompts, guidance, search, kw["sampling"], new_tokens, stop_ids=[], unroll_layers=unroll)
    inputs, _, _ = engine.encode_inputs(call, prompts)
    params = engine.placed_params(call)
    memory = engine.run.lower(call.program, params, inputs).compile().memory_analysis()
    weights_gb = sum(x.nbytes for x in jax.tree.leaves(params)) / 1e9
    if unroll:
        params = params.map(unstack_blocks)
    parts = step_parts(models, call, params, inputs)
    n_steps = call.program.n_steps
    rate = parts["step_gflop"] * n_steps / seconds
    # Roofline: a step cannot run faster than its FLOPs at the matmul peak, nor than its bytes at the
    # bandwidth; at 16 rows decoding streams every weight once per 16 tokens and is bandwidth-bound.
    roofline = min(peak, bandwidth * parts["step_gflop"] / parts["step_gbytes"])
    row = {"dtype": dtype_name, "layers": "unrolled" if unroll else "scan", "prompts": n_prompts,
           "s_per_prompt": seconds / n_prompts, "weights_gb": weights_gb,
           "temp_gb": memory.temp_size_in_bytes / 1e9 if memory is not None else float("nan"),
           "compile_s": first - seconds, "gflop_per_s": rate, "peak_gflop_per_s": peak,
           "fraction_of_peak": rate / peak, "bandwidth_gb_per_s": bandwidth, "roofline_gflop_per_s": roofline,
           "fraction_of_roofline": rate / roofline, **parts}
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| dtype | layers | prompts | rows | s/prompt | compile s | weights GB | XLA temp GB | step GFLOP "
             "| step GB | GFLOP/s | matmul peak GFLOP/s | % of peak "
             "| roofline GFLOP/s | % of roofline | step ms | models ms (blocks + heads) | of which vocab heads ms "
             "| guidance ms | sampling ms |",
             "|---|---|" + "---:|" * 18]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['layers']} | {r['prompts']} | {r['rows']} | {r['s_per_prompt']:.2f} "
                     f"| {r['compile_s']:.0f} | {r['weights_gb']:.2f} | {r['temp_gb']:.2f} "
                     f"| {r['step_gflop']:.1f} | {r['step_gbytes']:.2f} | {r['gflop_per_s']:.0f} "
                     f"| {r['peak_gflop_per_s']:.0f} | {100 * r['fraction_of_peak']:.0f}% "
                     f"| {r['roofline_gflop_per_s']:.0f} | {100 * r['fraction_of_roofline']:.0f}% "
                     f"| {1000 * r['step_s']:.0f} | {1000 * r['models_s']:.0f} "
                     f"| {1000 * r['vocab_heads_s']:.0f} | {1000 * r['guidance_s']:.0f} "
                     f"| {1000 * r['sampling_s']:.1f} |")
    by_case = {(r["dtype"], r["prompts"], r["layers"]): r for r in rows}
    for (dtype, prompts, layers), r in by_case.items():
        scan = by_case.get((dtype, prompts, "scan"))
        if layers == "unrolled" and scan:
            speedup = scan["s_per_prompt"] / r["s_per_prompt"]
            lines.append(f"\n{dtype}, {prompts} prompt(s): unrolled layers {speedup:.2f}x "
                         f"the speed of the scan over stacked layers, compile {r['compile_s']:.0f} s vs "
                         f"{scan['compile_s']:.0f} s, XLA temp {r['temp_gb']:.2f} vs {scan['temp_gb']:.2f} GB")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--prompts", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layer-loops", nargs="*", default=["scan", "unrolled"], choices=["scan", "unrolled"],
                    help="how each model runs its blocks: a scan over the stacked weights (the default of generate) "
                         "or one block after another on per-layer weights (generate(unroll_layers=True))")
    ap.add_argument("--out", default="")
    ap.add_argument("--peak-size", type=int, default=0,
                    help="n of the n^3 matmul that measures the peak (default: 2048 on CPU, 8192 on an accelerator, "
                         "where a 2048^3 dot is over in microseconds and launch time hides the peak)")
    args = ap.parse_args()
    peak_size = args.peak_size or (2048 if jax.default_backend() == "cpu" else 8192)
    rows = []
    bandwidth = read_bandwidth()
    print(f"read bandwidth: {bandwidth:.1f} GB/s", flush=True)
    for name in args.dtypes:
        dtype = jnp.dtype(name)
        peak = matmul_peak(dtype, peak_size)
        print(f"{name} matmul peak: {peak:.0f} GFLOP/s", flush=True)
        models = make_models(dtype)
        for n in args.prompts:
            for loop in args.layer_loops:
                unroll = loop == "unrolled"
                rows.append(run_case(models, name, n, args.new_tokens, args.repeats, peak, bandwidth, unroll))
        del models
    hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {jax.devices()[0].device_kind}"
    text = (f"Hardware: {hardware}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}; read bandwidth {bandwidth:.1f} GB/s; "
            f"peak from a {peak_size}^3 matmul"
            f"\n\n{table(rows)}")
    report(text, args.out)


if __name__ == "__main__":
    main()
