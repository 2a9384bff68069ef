"""FUDGE token values: train the explicit guide (a vocab-sized value head) on {prompt, response, reward}.

    python train/fudge.py --train-data FILE.jsonl --output-dir RUN [--val-data FILE.jsonl] [--model PATH] ...

Flags mirror `ivg_jax.training.TrainConfig` (`--help` lists them); the run resumes when rerun.
"""

import sys

from ivg_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main("fudge", description=__doc__))
