"""Run one of the paper's task recipes (IMDB sentiment with GPT-2, TL;DR summarization, AlpacaEval 2.0 with
Mistral-7B-Instruct / Mixtral-8x7B-Instruct guided by Tulu-2) on a JSONL prompt file.

    python decode/recipe.py --list
    python decode/recipe.py alpaca_eval_mistral --prompts alpaca_eval.jsonl --output model_outputs.json
    python decode/recipe.py imdb_gpt2 --prompts test.jsonl --output out.jsonl \
        --tuned runs/dpo/export --value runs/value/export

Model flags replace the recipe's hub ids with local paths; --max-new-tokens, --limit and --batch-size resize a run.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from ivg_jax.experiments.recipes import RECIPES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", choices=sorted(RECIPES))
    ap.add_argument("--list", action="store_true", help="print the recipes and exit")
    ap.add_argument("--prompts", help="JSONL file of prompt records")
    ap.add_argument("--output", help="output file (JSONL, or AlpacaEval's JSON for the alpaca_eval recipes)")
    for name in ("base", "tuned", "reference", "value"):
        ap.add_argument(f"--{name}", default=None, help=f"path or hub id replacing the recipe's {name} model")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    ap.add_argument("--batch-size", type=int, default=4, help="prompts per generate call (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args(argv)
    if args.list:
        for r in RECIPES.values():
            print(f"{r.name}: {r.task}; base {r.base}; token={r.token} chunk={r.chunk} "
                  f"W,K,L={r.beams},{r.candidates},{r.chunk_length} T={r.temperature}. {r.notes}")
        return 0
    if not (args.recipe and args.prompts and args.output):
        ap.error("a recipe, --prompts and --output are required (or --list)")
    from ivg_jax.runtime import tune_cpu

    tune_cpu()
    import ivg_jax
    from ivg_jax.errors import user_error_line
    from ivg_jax.experiments.recipes import run_recipe

    overrides = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    paths = {k: getattr(args, k) for k in ("base", "tuned", "reference", "value")}
    try:
        out = run_recipe(RECIPES[args.recipe], args.prompts, args.output, paths, limit=args.limit,
                         batch_size=args.batch_size, seed=args.seed, dtype=args.dtype, **overrides)
    except (ivg_jax.IvgError, UnicodeDecodeError, OSError) as e:
        print(user_error_line(e), file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
