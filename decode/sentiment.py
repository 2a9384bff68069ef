"""The controlled-sentiment experiment end to end on the embedded SmolLM2-135M-Instruct (VADER as gold judge):
sample → label (Bradley–Terry) → DPO-train the implicit guide → train the token-value model → decode the test
prompts with every method → evaluate (reward with 95% intervals, NLL, KL, distinct-n, compute). Ends by printing
the results table; everything lands in --run-dir, and rerunning the same command resumes.

    python decode/sentiment.py                          # fast preset: the README's main job (minutes on 2 CPUs)
    python decode/sentiment.py --preset full --run-dir runs/sentiment-full
    python decode/sentiment.py --stages decode,evaluate --methods base,ivg   # some stages / methods only

The same as `ivg demo ...`: every field of SentimentConfig is a flag (--help) and a flag overrides the preset.
"""

import sys

from ivg_jax.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
