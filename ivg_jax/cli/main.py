"""`ivg`: one command for decoding, training, evaluation, benchmarks, the demo and the task recipes.

    ivg decode --input prompts.jsonl --output out.jsonl [--token implicit --tuned T --reference R] ...
    ivg train dpo|sft|value|rm --train-data pairs.jsonl --output-dir runs/x ...
    ivg eval --input out.jsonl [--model M]
    ivg demo [--preset fast|full]             the sentiment experiment (the README's main job)
    ivg recipe NAME --prompts F --output O    the paper's tasks (ivg recipe --list)
    ivg bench decode|engine|train             benchmark scripts (from a source checkout)

Options of decode / train / eval / demo are fields of typed configs; `--config FILE.yaml|.toml` sets them from a
file and flags override it. A user error prints one line (exit 2); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

from ivg_jax.cli.args import add_dataclass_flags, config_from

TRAIN_OBJECTIVES = {"sft": "sft", "dpo": "dpo", "value": "fudge", "rm": "reward"}
TRAIN_HELP = {
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


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Scores a decode output file (`ivg eval`)."""

    input: str
    reward: str = "vader"  # the gold judge: "vader" (sentiment) or "none"
    model: str = ""  # a model for fluency (per-token NLL of each output given its templated prompt); "" = skip
    template: str = "{prompt}"
    output: str = ""  # also write the summary here (JSON)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML or TOML file of options; flags override it")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def parser() -> argparse.ArgumentParser:
    from ivg_jax.decoding.jobs import DecodeJobConfig
    from ivg_jax.experiments.sentiment.pipeline import PRESETS, STAGES, SentimentConfig
    from ivg_jax.training import TrainConfig

    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="ivg", description=__doc__, formatter_class=fmt)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("decode", help="decode a JSONL prompt file (resumable, shardable)", formatter_class=fmt,
                       description=DecodeJobConfig.__doc__ + "\n\n" + sys.modules[DecodeJobConfig.__module__].__doc__)
    add_dataclass_flags(p, DecodeJobConfig)
    _common(p)
    p = sub.add_parser("train", help="train a guide: sft, dpo, value (FUDGE), rm (Bradley-Terry)")
    tsub = p.add_subparsers(dest="objective", required=True, metavar="OBJECTIVE")
    for name in TRAIN_OBJECTIVES:
        tp = tsub.add_parser(name, help=f"{name} training (docs/training.md)")
        add_dataclass_flags(tp, TrainConfig, skip=("objective",), help_text=TRAIN_HELP)
        _common(tp)
    p = sub.add_parser("eval", help="score a decode output file: gold reward with 95%% CI, NLL, distinct-n")
    add_dataclass_flags(p, EvalConfig)
    _common(p)
    p = sub.add_parser("demo", help="the sentiment experiment on the embedded SmolLM2 (the README's main job)")
    p.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    add_dataclass_flags(p, SentimentConfig, skip=("run_dir",))
    p.add_argument("--run-dir", dest="run_dir", default=None, help="default: runs/sentiment-<preset>")
    _common(p)
    p = sub.add_parser("recipe", help="the paper's three tasks (ivg recipe --list)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("bench", help="run a benchmark script of a source checkout")
    p.add_argument("which", choices=["decode", "engine", "train"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["recipe"]:
        sys.path.insert(0, _repo_dir("decode"))
        from recipe import main as recipe_main  # the decode/ entry point, unchanged

        return recipe_main(argv[1:])
    args = parser().parse_args(argv)
    if args.command == "bench":
        script = os.path.join(_repo_dir("benchmarks"),
                              {"decode": "decode_throughput.py", "engine": "engine_overhead.py",
                               "train": "train_throughput.py"}[args.which])
        return subprocess.call([sys.executable, script, *args.rest])
    from ivg_jax.runtime import tune_cpu

    tune_cpu()
    import ivg_jax

    try:
        return _run(args, argv)
    except ivg_jax.IvgError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\ninterrupted {e}; rerun the same command to resume", file=sys.stderr)
        return 130


def _run(args, argv) -> int:
    progress = not args.quiet
    if args.command == "decode":
        from ivg_jax.decoding.jobs import DecodeJobConfig, run_decode_job

        cfg = config_from(DecodeJobConfig, args, argv, args.config)
        print(run_decode_job(cfg, progress))
        return 0
    if args.command == "train":
        from ivg_jax.defaults import default_model_path
        from ivg_jax.training import TrainConfig, train

        cfg = config_from(TrainConfig, args, argv, args.config, objective=TRAIN_OBJECTIVES[args.objective])
        if not cfg.model:
            cfg = dataclasses.replace(cfg, model=str(default_model_path()))
        result = train(cfg, progress=progress)
        print(json.dumps({"final_step": result.final_step, "best_step": result.best_step,
                          "best_metrics": result.best_metrics, "export_dir": str(result.export_dir)}, indent=2))
        return 0
    if args.command == "eval":
        summary = evaluate_file(config_from(EvalConfig, args, argv, args.config))
        print(json.dumps(summary, indent=2))
        return 0
    from ivg_jax.experiments.sentiment.pipeline import PRESETS, SentimentConfig, run

    cfg = config_from(SentimentConfig, args, argv, args.config, base=PRESETS[args.preset],
                      run_dir=args.run_dir or f"runs/sentiment-{args.preset}")
    summaries = run(cfg, [s.strip() for s in args.stages.split(",") if s.strip()], progress=progress,
                    log=lambda line: print(line, file=sys.stderr))
    if "evaluate" in summaries:
        print(f"\nControlled sentiment, {args.preset} preset ({cfg.n_test} test prompts, {cfg.max_new_tokens} new "
              f"tokens, T={cfg.temperature}, W,K,L={cfg.beams},{cfg.candidates},{cfg.chunk_length}); "
              f"run directory {cfg.run_dir}\n")
        print(summaries["evaluate"]["table"])
    return 0


def evaluate_file(cfg: EvalConfig) -> dict:
    """Summary of a decode output file: n, gold reward mean and 95% CI, KL, compute, distinct-2/3, NLL."""
    import numpy as np

    from ivg_jax.errors import InputError
    from ivg_jax.evaluation.metrics import bootstrap_ci, continuation_nll, distinct_n

    if cfg.reward not in ("vader", "none"):
        raise InputError(f"reward must be 'vader' or 'none'; got {cfg.reward!r}")
    if not os.path.isfile(cfg.input):
        raise InputError(f"input file {cfg.input} does not exist")
    rows = [json.loads(x) for x in open(cfg.input) if x.strip()]
    if not rows or any("output" not in r or "prompt" not in r for r in rows):
        raise InputError(f"{cfg.input} must hold decode results (lines with 'prompt' and 'output')")
    texts = [r["output"] for r in rows]
    summary = {"n": len(rows), "distinct_2": distinct_n(texts, 2), "distinct_3": distinct_n(texts, 3)}
    for key in ("kl", "forward_tokens"):
        if all(key in r for r in rows):
            summary[key] = float(np.mean([r[key] for r in rows]))
    if cfg.reward == "vader":
        from ivg_jax.evaluation.sentiment import VaderReward

        mean, lo, hi = bootstrap_ci(VaderReward()([r["prompt"] + r["output"] for r in rows]))
        summary |= {"reward": mean, "reward_ci": [lo, hi]}
    if cfg.model:
        import ivg_jax

        model = ivg_jax.load_model(cfg.model)
        ids = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        summary["nll"] = float(np.nanmean(continuation_nll(model, [r["prompt"] for r in rows], ids, cfg.template)))
    if cfg.output:
        with open(cfg.output, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def _repo_dir(name: str) -> str:
    """decode/ and benchmarks/ live in the source checkout, next to the package."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), name)
    if not os.path.isdir(path):
        from ivg_jax.errors import InputError

        raise InputError(f"{name}/ is not next to the installed package; run from a source checkout")
    return path


if __name__ == "__main__":
    sys.exit(main())
