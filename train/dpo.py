"""DPO: train the implicit guide (tuned vs reference) from preference pairs {prompt, chosen, rejected}.

    python train/dpo.py --train-data FILE.jsonl --output-dir RUN [--val-data FILE.jsonl] [--model PATH] ...

Flags mirror `ivg_jax.training.TrainConfig` (`--help` lists them); the run resumes when rerun.
"""

import sys

from ivg_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main("dpo", description=__doc__))
