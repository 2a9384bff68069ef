"""DPO: train the implicit guide (tuned vs reference) from preference pairs {prompt, chosen, rejected}.

    python train/dpo.py --train-data FILE.jsonl --output-dir RUN [--val-data FILE.jsonl] [--model PATH] ...

The same as `ivg train dpo ...`: flags are the fields of `ivg_jax.training.TrainConfig` (`--help`),
`--config FILE.yaml|.toml` sets them from a file; the run resumes when rerun.
"""

import sys

from ivg_jax.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", "dpo", *sys.argv[1:]]))
