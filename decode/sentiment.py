"""The controlled-sentiment experiment end to end on the embedded SmolLM2-135M-Instruct (VADER as gold judge):
sample → label (Bradley–Terry) → DPO-train the implicit guide → train the token-value model → decode the test
prompts with every method → evaluate (reward with 95% intervals, NLL, KL, distinct-n, compute). Ends by printing
the results table; everything lands in --run-dir, and rerunning the same command resumes.

    python decode/sentiment.py                          # fast preset: the README's main job (minutes on 2 CPUs)
    python decode/sentiment.py --preset full --run-dir runs/sentiment-full
    python decode/sentiment.py --stages decode,evaluate --methods base,ivg   # some stages / methods only

Every field of SentimentConfig is a flag (--help); a flag overrides the preset.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from ivg_jax.cli.args import add_dataclass_flags
    from ivg_jax.experiments.sentiment.pipeline import PRESETS, STAGES, SentimentConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 argument_default=argparse.SUPPRESS)
    ap.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--quiet", action="store_true", default=False, help="no progress bars")
    add_dataclass_flags(ap, SentimentConfig, skip=("run_dir",))
    ap.add_argument("--run-dir", dest="run_dir", default=None, help="default: runs/sentiment-<preset>")
    args = ap.parse_args(argv)
    # Only flags given on the command line override the preset (argparse defaults are the full run's).
    given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in (argv or sys.argv[1:]) if a.startswith("--")}
    overrides = {k: v for k, v in vars(args).items() if k in given and k in SentimentConfig.__dataclass_fields__}
    from ivg_jax.runtime import tune_cpu

    tune_cpu()
    import ivg_jax
    from ivg_jax.experiments.sentiment.pipeline import run

    try:
        cfg = SentimentConfig(**(PRESETS[args.preset] | overrides | {
            "run_dir": args.run_dir or f"runs/sentiment-{args.preset}"}))
        summaries = run(cfg, [s.strip() for s in args.stages.split(",") if s.strip()], progress=not args.quiet,
                        log=lambda line: print(line, file=sys.stderr))
    except ivg_jax.IvgError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\ninterrupted: {e}; rerun the same command to resume", file=sys.stderr)
        return 130
    if "evaluate" in summaries:
        print(f"\nControlled sentiment, {args.preset} preset ({cfg.n_test} test prompts, {cfg.max_new_tokens} new "
              f"tokens, T={cfg.temperature}, W,K,L={cfg.beams},{cfg.candidates},{cfg.chunk_length}); "
              f"run directory {cfg.run_dir}\n")
        print(summaries["evaluate"]["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
