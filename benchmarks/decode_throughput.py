"""Decode throughput of SmolLM2-135M: ivg-jax (jitted prefill + lax.scan decode) vs transformers `generate`.

Each (framework, batch) runs in its own process, so peak RSS is that framework's alone; both decode greedily
the same left-padded prompts for the same number of new tokens (no early stop), on the same CPU, in one run.

    python benchmarks/decode_throughput.py [--batches 1 16 64] [--new-tokens 32] [--repeats 3] [--out FILE]

`--per-layer` loads ivg-jax's model with its blocks per layer (`load_model(per_layer=True)`: blocks run one after
another in place instead of as a loop over the stacked weights). `--quantize int8` runs both sides with int8
weights: ivg-jax's weight-only int8 (`load_model(quantize="int8")`: projections, heads and the embedding, a scale
per output channel) against torch's own CPU int8 path (`torch.ao.quantization.quantize_dynamic` of every
`nn.Linear`: int8 weights and dynamically quantized activations, fbgemm), and reports how close ivg-jax's int8
model stays to its float model (top-1 agreement and KL, teacher-forced). `--model DIR` benchmarks an HF checkpoint
directory instead of the embedded GGUF; `--randomize` first writes random weights of DIR/config.json there with
transformers (how the GPU run gets SmolLM2-shaped weights: the GGUF is over the device tool's transfer limit).
On a GPU the transformers side runs on CUDA and the memory column is each framework's device peak instead of
host RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from timing import cpu_name, report, timed

PROMPT_WORDS = ("Here is a movie review from imdb: the film was one of the best and worst things I have "
                "seen this year, with actors who").split()


def prompts(batch: int) -> list[str]:
    # different lengths, so padding is exercised as in real batches
    return [" ".join(PROMPT_WORDS[: 8 + (i % 8)]) for i in range(batch)]


def randomize(model_dir: str) -> None:
    """Random-init weights (seed 0) for the config.json in `model_dir`, saved there as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    model.save_pretrained(model_dir)


def time_complete(model, texts: list[str], new_tokens: int, repeats: int) -> tuple[float, float, object]:
    """Plain greedy decoding of `texts` without early stop: (seconds of the first, compiling call, median seconds
    of `repeats` calls after it, the `Completion`)."""
    from ivg_jax.decoding.plain import complete

    out, first, median = timed(lambda: complete(model, texts, max_new_tokens=new_tokens, stop_ids=[]), repeats)
    return first, median, out


def run_ours(batch: int, new_tokens: int, repeats: int, dtype: str, model_dir: str | None,
             per_layer: bool = False, quantize: str | None = None) -> dict:
    from ivg_jax.runtime import tune_cpu

    tune_cpu()
    import jax

    from ivg_jax import load_model
    from ivg_jax.decoding.plain import complete
    from ivg_jax.defaults import default_model_path

    source = model_dir or default_model_path()
    model = load_model(source, dtype=dtype, per_layer=per_layer, quantize=quantize)
    p = prompts(batch)
    first, steady, out = time_complete(model, p, new_tokens, repeats)
    _, _, ttft = timed(lambda: complete(model, p, max_new_tokens=1, stop_ids=[]), repeats)  # 1st call compiles
    assert out.tokens.shape == (batch, new_tokens)
    stats = jax.devices()[0].memory_stats() or {}
    result = dict(seconds=steady, compile_s=first - steady, ttft_s=ttft,
                  backend=jax.default_backend(), device_peak_mb=stats.get("peak_bytes_in_use", 0) / 2**20)
    if quantize:  # peak RSS read before the float model loads: the quantized model's alone
        result["peak_rss_mb_timed"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        float_model = load_model(source, dtype=dtype, per_layer=per_layer)
        _, result["float_seconds"], greedy = time_complete(float_model, p, new_tokens, repeats)  # same run
        result.update(agreement_with_float(model, float_model, greedy.tokens))
    return result


def agreement_with_float(quantized, float_model, tokens) -> dict:
    """Teacher-forced on the float model's greedy continuations `tokens` [batch, new tokens]: how often the
    quantized model's top token is the float model's, and the mean KL(float || quantized) of their next-token
    distributions (greedy paths themselves part at the first near-tie, which says little about the rounding)."""
    import jax
    import numpy as np

    from ivg_jax import forward

    f, q = (np.asarray(jax.nn.log_softmax(forward(m, tokens), axis=-1)) for m in (float_model, quantized))
    kl = (np.exp(f) * (f - q)).sum(-1)
    return dict(top1_agree=float((f.argmax(-1) == q.argmax(-1)).mean()), kl=float(kl.mean()))


def run_hf(batch: int, new_tokens: int, repeats: int, dtype: str, model_dir: str | None,
           quantize: str | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ivg_jax.defaults import default_model_path

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    if model_dir:
        where = dict(pretrained_model_name_or_path=model_dir)
    else:
        path = default_model_path()
        where = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(**where)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch_dtype).to(device).eval()
    quantized = bool(quantize) and device == "cpu"  # torch's dynamic int8 Linear is a CPU (fbgemm) kernel
    if quantized:
        from torch.ao.quantization import quantize_dynamic

        model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    enc = tok(prompts(batch), return_tensors="pt", padding=True).to(device)
    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)

    def gen(n):
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    gen(2)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = gen(new_tokens)
        times.append(time.perf_counter() - t)
    assert out.shape[1] - enc["input_ids"].shape[1] == new_tokens
    ttft = []
    for _ in range(repeats):
        t = time.perf_counter()
        gen(1)
        ttft.append(time.perf_counter() - t)
    on = f"{device}, {torch.get_num_threads()} threads" if device == "cpu" else device
    if quantize:
        on += ", int8 quantize_dynamic" if quantized else ", its float weights: no int8 Linear on CUDA"
    return dict(seconds=statistics.median(times), compile_s=0.0, ttft_s=statistics.median(ttft),
                backend=f"torch {torch.__version__} ({on})",
                device_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0)


def child(args) -> None:
    if args.framework == "ivg-jax":
        result = run_ours(args.batch, args.new_tokens, args.repeats, args.dtype, args.model, args.per_layer,
                          args.quantize)
    else:
        result = run_hf(args.batch, args.new_tokens, args.repeats, args.dtype, args.model, args.quantize)
    result["peak_rss_mb"] = result.pop("peak_rss_mb_timed", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=None, help="also write the Markdown table here")
    ap.add_argument("--model", default=None, help="an HF checkpoint directory (default: the embedded SmolLM2 GGUF)")
    ap.add_argument("--per-layer", action="store_true",
                    help="ivg-jax's blocks held per layer (load_model(per_layer=True))")
    ap.add_argument("--quantize", choices=["int8"], default=None,
                    help="int8 weights on both sides (ivg-jax weight-only, torch dynamic quantization)")
    ap.add_argument("--randomize", action="store_true", help="first write random weights for --model's config")
    ap.add_argument("--child", choices=["ivg-jax", "transformers"], dest="framework")
    ap.add_argument("--batch", type=int)
    args = ap.parse_args()
    if args.framework:
        return child(args)
    if args.randomize:
        if not args.model:
            sys.exit("--randomize needs --model DIR holding a config.json")
        randomize(args.model)
    rows = []
    for batch in args.batches:
        res = {}
        for fw in ("ivg-jax", "transformers"):
            cmd = [sys.executable, __file__, "--child", fw, "--batch", str(batch), "--new-tokens",
                   str(args.new_tokens), "--repeats", str(args.repeats), "--dtype", args.dtype]
            cmd += ["--model", args.model] if args.model else []
            cmd += ["--per-layer"] if args.per_layer and fw == "ivg-jax" else []
            cmd += ["--quantize", args.quantize] if args.quantize else []
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{fw} batch {batch} failed:\n{proc.stderr[-3000:]}")
            res[fw] = json.loads(line[0][7:])
            res[fw]["tok_s"] = batch * args.new_tokens / res[fw]["seconds"]
            # decode phase: the tokens after the first, over the time after the first token
            res[fw]["decode_tok_s"] = batch * (args.new_tokens - 1) / max(res[fw]["seconds"] - res[fw]["ttft_s"], 1e-9)
            print(f"batch {batch:3d} {fw:12s} {res[fw]['tok_s']:8.1f} tok/s (decode phase "
                  f"{res[fw]['decode_tok_s']:8.1f})  compile {res[fw]['compile_s']:5.1f}s  "
                  f"ttft {res[fw]['ttft_s'] * 1000:7.1f} ms  peak {res[fw]['peak_rss_mb']:6.0f} MB RSS, "
                  f"{res[fw]['device_peak_mb']:6.0f} MB device"
                  + (f"  vs float: top-1 {res[fw]['top1_agree']:.1%}, KL {res[fw]['kl']:.4f}, float "
                     f"{batch * args.new_tokens / res[fw]['float_seconds']:.1f} tok/s" if "kl" in res[fw] else ""),
                  flush=True)
        rows.append((batch, res))
    cpu = cpu_name()
    gpu = rows[0][1]["ivg-jax"]["backend"] == "gpu"
    mem = "device peak" if gpu else "peak RSS"
    weights = f"random weights in {args.model}" if args.randomize else (args.model or "the embedded GGUF")
    lines = [
        f"SmolLM2-135M-Instruct-shaped model ({weights}, {args.dtype}), greedy, {args.new_tokens} new tokens, "
        f"ivg-jax's blocks {'per layer' if args.per_layer else 'stacked (a lax.scan)'}, "
        + (f"int8 weights on both sides (ivg-jax weight-only per output channel; torch quantize_dynamic); "
           f"ivg-jax int8 against its float model, teacher-forced on the float model's greedy continuations: "
           f"top-1 token agreement {min(r['ivg-jax']['top1_agree'] for _, r in rows):.1%} (lowest batch), "
           f"mean KL(float || int8) {max(r['ivg-jax']['kl'] for _, r in rows):.4f} nats (highest); "
           if args.quantize else "")
        + f"median of {args.repeats}; "
        "tok/s counts prefill (end to end); decode phase excludes time to first token; "
        f"{os.cpu_count()} CPU cores ({cpu}); ivg-jax on {rows[0][1]['ivg-jax']['backend']}, baseline "
        f"{rows[0][1]['transformers']['backend']}.",
        "",
        "| batch | tok/s ivg-jax / HF | ratio | decode-phase tok/s ivg-jax / HF | ratio | ivg-jax compile s "
        f"| TTFT ivg-jax / HF ms | {mem} ivg-jax / HF MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if args.quantize:
        lines[2] = lines[2].rstrip() + " ivg-jax float tok/s | int8 / float |"
        lines[3] += "---:|---:|"
    for batch, r in rows:
        a, b = r["ivg-jax"], r["transformers"]
        lines.append(f"| {batch} | {a['tok_s']:.1f} / {b['tok_s']:.1f} | {a['tok_s'] / b['tok_s']:.2f}x | "
                     f"{a['decode_tok_s']:.1f} / {b['decode_tok_s']:.1f} | "
                     f"{a['decode_tok_s'] / b['decode_tok_s']:.2f}x | "
                     f"{a['compile_s']:.1f} | {a['ttft_s'] * 1000:.0f} / {b['ttft_s'] * 1000:.0f} | "
                     + (f"{a['device_peak_mb']:.0f} / {b['device_peak_mb']:.0f} |" if gpu
                        else f"{a['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f} |")
                     + (f" {batch * args.new_tokens / a['float_seconds']:.1f} | "
                        f"{a['float_seconds'] / a['seconds']:.2f}x |" if args.quantize else ""))
    report("\n" + "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
