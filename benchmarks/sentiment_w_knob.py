"""The implicit weight knob: IVG and EFT at w = 2, paired prompt by prompt with the full run (w = 1).

    # a run directory sharing runs/sentiment-full's data, samples, dpo, fudge and their stage markers:
    python decode/sentiment.py --preset full-bt400 --run-dir runs/sentiment-full-w2 --n-test 64 --implicit-weight 2 \\
        --methods base,eft,ivg
    python decode/sentiment.py --preset full-bt400 --run-dir runs/sentiment-full-w2 --n-test 200 --implicit-weight 2 \\
        --methods ivg
    python benchmarks/sentiment_w_knob.py [--n 200]

Per-prompt seeds do not depend on the number of test prompts, so the knob run's base outputs must equal the full
run's (checked on the prompts both decoded); every difference below is paired over the same prompts.
"""

import argparse
from pathlib import Path

import numpy as np

from ivg_jax.evaluation.metrics import bootstrap_ci
from ivg_jax.evaluation.sentiment import VaderReward
from ivg_jax.experiments.sentiment.pipeline import read_jsonl

FULL, KNOB = "runs/sentiment-full", "runs/sentiment-full-w2"


def rows(run: str, method: str) -> list[dict]:
    return read_jsonl(Path(run) / "decode" / f"{method}.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="first N test prompts (methods with fewer are left out)")
    n = ap.parse_args().n
    full = {m: rows(FULL, m) for m in ("base", "eft", "ivg", "cbs_explicit", "cbs_explicit_matched", "bon_matched")}
    knob = {m: rows(KNOB, m) for m in ("base", "eft", "ivg")}
    shared = min(len(full["base"]), len(knob["base"]))
    if full["base"][:shared] != knob["base"][:shared]:
        raise SystemExit(f"{KNOB} is not paired with {FULL}: the base outputs of the first {shared} prompts differ")
    table = {(f"{m} (w=1)" if m in ("ivg", "eft") else m): r for m, r in full.items()}
    table.update({f"{m} (w=2)": r for m, r in knob.items() if m != "base"})
    table = {k: v[:n] for k, v in table.items() if len(v) >= n}
    gold = VaderReward()
    reward = {k: np.asarray(gold([r["prompt"] + r["text"] for r in v])) for k, v in table.items()}
    print(f"| method (first {n} test prompts) | gold reward (95% CI) | KL (nats) | forward tokens / prompt |")
    print("|---|---|---|---|")
    for k, v in table.items():
        mean, lo, hi = bootstrap_ci(reward[k])
        kl = np.mean([r["kl"] for r in v])
        tokens = np.mean([r["forward_tokens"] for r in v])
        print(f"| {k} | {mean:.2f} [{lo:.2f}, {hi:.2f}] | {kl:.2f} | {tokens:.0f} |")
    print("\n| paired difference | mean (95% CI) |\n|---|---|")
    for a, b in (("ivg (w=2)", "ivg (w=1)"), ("eft (w=2)", "eft (w=1)"), ("ivg (w=1)", "cbs_explicit_matched"),
                 ("ivg (w=2)", "cbs_explicit_matched"), ("ivg (w=2)", "bon_matched")):
        if a in reward and b in reward:
            mean, lo, hi = bootstrap_ci(reward[a] - reward[b])
            print(f"| {a} − {b} | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] |")


if __name__ == "__main__":
    main()
