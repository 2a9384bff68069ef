"""Decode throughput of SmolLM2-135M: ivg-jax (jitted prefill + lax.scan decode) vs transformers `generate`.

Each (framework, batch) runs in its own process, so peak RSS is that framework's alone; both decode greedily
the same left-padded prompts for the same number of new tokens (no early stop), on the same CPU, in one run.

    python benchmarks/decode_throughput.py [--batches 1 16 64] [--new-tokens 32] [--repeats 3] [--out FILE]
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

PROMPT_WORDS = ("Here is a movie review from imdb: the film was one of the best and worst things I have "
                "seen this year, with actors who").split()


def prompts(batch: int) -> list[str]:
    # different lengths, so padding is exercised as in real batches
    return [" ".join(PROMPT_WORDS[: 8 + (i % 8)]) for i in range(batch)]


def run_ours(batch: int, new_tokens: int, repeats: int, dtype: str) -> dict:
    from ivg_jax.runtime import tune_cpu

    tune_cpu()
    import jax

    from ivg_jax import load_model
    from ivg_jax.decoding.plain import complete
    from ivg_jax.defaults import default_model_path

    model = load_model(default_model_path(), dtype=dtype)
    p = prompts(batch)
    t = time.perf_counter()
    complete(model, p, max_new_tokens=new_tokens, stop_ids=[])
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = complete(model, p, max_new_tokens=new_tokens, stop_ids=[])
        times.append(time.perf_counter() - t)
    complete(model, p, max_new_tokens=1, stop_ids=[])  # compile the 1-token program
    ttft = []
    for _ in range(repeats):
        t = time.perf_counter()
        complete(model, p, max_new_tokens=1, stop_ids=[])
        ttft.append(time.perf_counter() - t)
    assert out.tokens.shape == (batch, new_tokens)
    steady = statistics.median(times)
    return dict(seconds=steady, compile_s=first - steady, ttft_s=statistics.median(ttft),
                backend=jax.default_backend())


def run_hf(batch: int, new_tokens: int, repeats: int, dtype: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ivg_jax.defaults import default_model_path

    path = default_model_path()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype).eval()
    enc = tok(prompts(batch), return_tensors="pt", padding=True)
    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)

    def gen(n):
        with torch.no_grad():
            return model.generate(**enc, max_new_tokens=n, min_new_tokens=n, **kwargs)

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
    return dict(seconds=statistics.median(times), compile_s=0.0, ttft_s=statistics.median(ttft),
                backend=f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def child(args) -> None:
    fn = run_ours if args.framework == "ivg-jax" else run_hf
    result = fn(args.batch, args.new_tokens, args.repeats, args.dtype)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=None, help="also write the Markdown table here")
    ap.add_argument("--child", choices=["ivg-jax", "transformers"], dest="framework")
    ap.add_argument("--batch", type=int)
    args = ap.parse_args()
    if args.framework:
        return child(args)
    rows = []
    for batch in args.batches:
        res = {}
        for fw in ("ivg-jax", "transformers"):
            cmd = [sys.executable, __file__, "--child", fw, "--batch", str(batch), "--new-tokens",
                   str(args.new_tokens), "--repeats", str(args.repeats), "--dtype", args.dtype]
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
                  f"ttft {res[fw]['ttft_s'] * 1000:7.1f} ms  peak {res[fw]['peak_rss_mb']:6.0f} MB", flush=True)
        rows.append((batch, res))
    cpu = platform.processor() or platform.machine()
    lines = [
        f"SmolLM2-135M-Instruct ({args.dtype}), greedy, {args.new_tokens} new tokens, median of {args.repeats}; "
        "tok/s counts prefill (end to end); decode phase excludes time to first token; "
        f"{os.cpu_count()} CPU cores ({cpu}); ivg-jax on {rows[0][1]['ivg-jax']['backend']}, baseline "
        f"{rows[0][1]['transformers']['backend']}.",
        "",
        "| batch | tok/s ivg-jax / HF | ratio | decode-phase tok/s ivg-jax / HF | ratio | ivg-jax compile s "
        "| TTFT ivg-jax / HF ms | peak RSS ivg-jax / HF MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, r in rows:
        a, b = r["ivg-jax"], r["transformers"]
        lines.append(f"| {batch} | {a['tok_s']:.1f} / {b['tok_s']:.1f} | {a['tok_s'] / b['tok_s']:.2f}x | "
                     f"{a['decode_tok_s']:.1f} / {b['decode_tok_s']:.1f} | "
                     f"{a['decode_tok_s'] / b['decode_tok_s']:.2f}x | "
                     f"{a['compile_s']:.1f} | {a['ttft_s'] * 1000:.0f} / {b['ttft_s'] * 1000:.0f} | "
                     f"{a['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
