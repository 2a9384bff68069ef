"""`train/<objective>.py` entry points: one TrainConfig from flags, the loop, a summary, clear exits."""

from __future__ import annotations

import argparse
import json
import sys

from ivg_jax.cli.args import add_dataclass_flags, dataclass_from_args

HELP = {
    "model": "checkpoint dir, .gguf file or hub id to start from; FUDGE / reward objectives add a fresh head "
             "(default: the embedded SmolLM2-135M-Instruct)",
    "train_data": "JSONL file (schemas: docs/training.md)",
    "val_data": "JSONL file for validation (same schema)",
    "output_dir": "run directory: checkpoints, metrics.jsonl, export/; rerun the same command to resume",
    "reference": "DPO reference model (default: the initial model)",
    "template": "prompt template, with a {prompt} field",
    "steps": "train steps (default: epochs x batches per epoch)",
    "train_top_blocks": "train only the top N blocks + final norm + untied head (default: full fine-tuning)",
    "reference_logprobs": "precompute (once, cached in the run dir) or per_batch",
    "fsdp": "shard weights over the data axis too (fully sharded data parallel)",
}


def main(objective: str, argv=None, description: str = "") -> int:
    from ivg_jax.runtime import tune_cpu
    from ivg_jax.training import TrainConfig

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_flags(parser, TrainConfig, skip=("objective",), help_text=HELP)
    args = parser.parse_args(argv)
    tune_cpu()
    import ivg_jax
    from ivg_jax.defaults import default_model_path
    from ivg_jax.training import train

    try:
        cfg = dataclass_from_args(TrainConfig, args, objective=objective, model=args.model or str(default_model_path()))
        result = train(cfg)
    except ivg_jax.IvgError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    print(json.dumps({"final_step": result.final_step, "best_step": result.best_step,
                      "best_metrics": result.best_metrics,
                      "export_dir": None if result.export_dir is None else str(result.export_dir)}, indent=2))
    return 0
