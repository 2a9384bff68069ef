"""Supervised fine-tuning (to make a DPO reference when you have none).

    python train/sft.py --train-data FILE.jsonl --output-dir RUN [--val-data FILE.jsonl] [--model PATH] ...

Flags mirror `ivg_jax.training.TrainConfig` (`--help` lists them); the run resumes when rerun.
"""

import sys

from ivg_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main("sft", description=__doc__))
