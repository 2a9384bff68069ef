"""Main job (for now): load the embedded SmolLM2-135M-Instruct and complete a few prompts, batched and jitted.

    python decode/complete.py [--model PATH_OR_ID] [--max-new-tokens N] [--temperature T] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time

from ivg_jax import load_model
from ivg_jax.runtime import tune_cpu
from ivg_jax.decoding.plain import complete
from ivg_jax.decoding.sampling import Sampling
from ivg_jax.defaults import default_model_path
from ivg_jax.errors import IvgError

PROMPTS = [
    "Here is a movie review from imdb: I went in expecting little, and",
    "Here is a movie review from imdb: The acting in this film",
    "Here is a movie review from imdb: Two hours of my life",
    "Here is a movie review from imdb: A quiet, patient story about",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint dir, .gguf file or hub id (default: embedded SmolLM2)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args(argv)
    tune_cpu()
    try:
        t0 = time.perf_counter()
        model = load_model(args.model or default_model_path(), dtype=args.dtype)
        t1 = time.perf_counter()
        result = complete(model, PROMPTS, max_new_tokens=args.max_new_tokens,
                          sampling=Sampling(args.temperature), seed=args.seed)
        t2 = time.perf_counter()
    except IvgError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for prompt, text in zip(PROMPTS, result.texts):
        print(f"\n>>> {prompt}\n{text}")
    print(f"\nloaded {model.source} in {t1 - t0:.1f}s; {len(PROMPTS)} prompts x {args.max_new_tokens} tokens "
          f"in {t2 - t1:.1f}s (compile included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
