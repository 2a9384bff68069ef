"""Supervised fine-tuning (to make a DPO reference when you have none).

    python train/sft.py --train-data FILE.jsonl --output-dir RUN [--val-data FILE.jsonl] [--model PATH] ...

The same as `ivg train sft ...`: flags are the fields of `ivg_jax.training.TrainConfig` (`--help`),
`--config FILE.yaml|.toml` sets them from a file; the run resumes when rerun.
"""

import sys

from ivg_jax.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", "sft", *sys.argv[1:]]))
