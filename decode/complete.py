"""Main job (for now): the embedded SmolLM2-135M-Instruct completes movie-review openings twice, batched and
jitted in one program each: plain sampling from the base, then guided by an implicit value.

Until the trained guides of the sentiment pipeline exist, the implicit value is contrastive: the same model under
a "glowing review" template (tuned) and the plain template (reference), added at token level
(ℓ_base + w·(ℓ_tuned − ℓ_ref)) and used to pick chunks (W=2, K=2, L=8).

    python decode/complete.py [--model PATH_OR_ID] [--max-new-tokens N] [--temperature T] [--weight W] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time

from ivg_jax.runtime import tune_cpu

PROMPTS = ["I went in expecting little, and", "The acting in this film", "Two hours of my life",
           "A quiet, patient story about"]
BASE_TEMPLATE = "Here is a movie review from imdb: {prompt}"
TUNED_TEMPLATE = "Here is a glowing, enthusiastic movie review from imdb: {prompt}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint dir, .gguf file or hub id (default: embedded SmolLM2)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    ap.add_argument("--weight", type=float, default=1.5, help="implicit guide weight w (default 1.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args(argv)
    tune_cpu()
    import ivg_jax
    from ivg_jax.defaults import default_model_path

    try:
        t0 = time.perf_counter()
        model = ivg_jax.load_model(args.model or default_model_path(), dtype=args.dtype)
        t1 = time.perf_counter()
        common = dict(sampling=ivg_jax.Sampling(args.temperature), max_new_tokens=args.max_new_tokens,
                      seed=args.seed, stop_strings=["\n\n"])
        plain = ivg_jax.generate(model, PROMPTS, ivg_jax.Guidance(base_template=BASE_TEMPLATE), **common)
        t2 = time.perf_counter()
        guide = ivg_jax.ImplicitGuide(model, model, args.weight, template=TUNED_TEMPLATE,
                                      reference_template=BASE_TEMPLATE)
        guidance = ivg_jax.Guidance(implicit=[guide], token="implicit", chunk="implicit",
                                    base_template=BASE_TEMPLATE)
        guided = ivg_jax.generate(model, PROMPTS, guidance, ivg_jax.Search(2, 2, 8), **common)
        t3 = time.perf_counter()
    except ivg_jax.IvgError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i, prompt in enumerate(PROMPTS):
        print(f"\n>>> {prompt}")
        print(f"  base:   {plain.texts[i].strip()}")
        print(f"  guided: {guided.texts[i].strip()}   [KL(guided‖base) {guided.kl[i].sum():.2f} nats]")
    print(f"\nloaded {model.source} in {t1 - t0:.1f}s; {len(PROMPTS)} prompts x {args.max_new_tokens} tokens: "
          f"base {t2 - t1:.1f}s, guided (3 models, W=K=2) {t3 - t2:.1f}s, compile included; "
          f"{guided.forward_tokens} model forward tokens guided vs {plain.forward_tokens} plain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
