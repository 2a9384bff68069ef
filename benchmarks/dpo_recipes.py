"""Which DPO recipe makes the sentiment experiment's implicit guide learn? (issue 12, item 4)

One data set, many recipes, one held-out yardstick. The data are the sentiment pipeline's own `sample` and
`label` stages (SmolLM2-135M continues movie-review openings, VADER scores them), run once into
`<work>/data`. Each recipe then DPO-trains a guide (the untuned model as reference) and is scored on the *same*
validation pairs (disjoint 1st-2nd, 3rd-4th responses of each validation prompt):

    acc_bt      the implicit reward r = beta * (log pi_tuned - log pi_ref) of the BT-chosen response is higher
    acc_argmax  the implicit reward orders the pair as the gold reward does (pairs with equal gold rewards left out)
    train_acc   accuracy on the recipe's own training pairs at the final step (memorising vs not learning)

Accuracies are read at the step with the lowest validation loss (the checkpoint the pipeline keeps) and at
the final step.

A recipe is a training label scheme plus optimiser settings:
    bt       the pipeline's Bradley-Terry draws p(y1 > y2) = sigmoid(r1 - r2) (noisy: ~73% agree with argmax)
    argmax   the same pairs, chosen = higher gold reward (ties dropped)
    maxgap   per prompt, the best against the worst of its samples (ties dropped): one pair, the largest gap
    allpairs every pair of a prompt's samples with distinct rewards, chosen = higher reward

    python benchmarks/dpo_recipes.py --work /tmp/dpo-recipes                      # every recipe below
    python benchmarks/dpo_recipes.py --work /tmp/dpo-recipes --only maxgap-lr5e-4  # one

Prints one table (and writes `<work>/recipes.md`); times are this machine's (2 CPU cores, fp32).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

# name -> (labels, learning rate, beta, top blocks, epochs, label smoothing)
RECIPES = {
    "bt-lr5e-4": ("bt", 5e-4, 0.1, 4, 2.0, 0.0),
    "argmax-lr5e-4": ("argmax", 5e-4, 0.1, 4, 2.0, 0.0),
    "maxgap-lr5e-4": ("maxgap", 5e-4, 0.1, 4, 2.0, 0.0),
    "allpairs-lr5e-4": ("allpairs", 5e-4, 0.1, 4, 2.0, 0.0),
    "allpairs-lr1e-4-b8": ("allpairs", 1e-4, 0.1, 8, 2.0, 0.0),
    "allpairs-lr1e-3-beta05": ("allpairs", 1e-3, 0.5, 4, 2.0, 0.0),
    # the fast preset's scale (160 train prompts x 4 samples, top 2 blocks)
    "maxgap-lr5e-4-top2-3ep": ("maxgap", 5e-4, 0.1, 2, 3.0, 0.0),
    "maxgap-lr5e-4-top2-6ep": ("maxgap", 5e-4, 0.1, 2, 6.0, 0.0),
    "maxgap-lr1e-3-top2-3ep": ("maxgap", 1e-3, 0.1, 2, 3.0, 0.0),
    "maxgap-lr5e-4-top2-3ep-beta05": ("maxgap", 5e-4, 0.5, 2, 3.0, 0.0),
    "allpairs-lr5e-4-top2-1ep": ("allpairs", 5e-4, 0.1, 2, 1.0, 0.0),
    # 2000 composed train prompts x 4 samples (the data-size lever)
    "maxgap-lr5e-4-top2-1ep": ("maxgap", 5e-4, 0.1, 2, 1.0, 0.0),
    "maxgap-lr5e-4-top4-1ep": ("maxgap", 5e-4, 0.1, 4, 1.0, 0.0),
    "maxgap-lr1e-3-top2-1ep": ("maxgap", 1e-3, 0.1, 2, 1.0, 0.0),
}


def make_data(work: Path, n_train: int, n_val: int, samples: int, tokens: int) -> Path:
    from ivg_jax.experiments.sentiment import SentimentConfig, run

    cfg = SentimentConfig(run_dir=str(work / "data"), n_train=n_train, n_val=n_val, n_test=1,
                          samples_per_prompt=samples, max_new_tokens=tokens, sample_batch=max(1, 64 // samples))
    run(cfg, stages=("sample", "label"), progress=False)
    return Path(cfg.run_dir)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def train_pairs(data: Path, labels: str) -> list[dict]:
    """Training pairs of a label scheme, made from the run's scored train samples (bt, maxgap and allpairs by
    the pipeline's own rule; argmax: bt's disjoint pairs with the higher reward chosen)."""
    from ivg_jax.experiments.sentiment.pipeline import _pairs_of

    rng = np.random.default_rng(0)
    pairs = []
    for row in _rows(data / "samples" / "train.jsonl"):
        kept = [(t, r, e) for t, r, e in zip(row["responses"], row["rewards"], row["ended"]) if t.strip()]
        if labels == "argmax":
            groups = [(a, b) if a[1] > b[1] else (b, a) for a, b in zip(kept[0::2], kept[1::2]) if a[1] != b[1]]
        elif labels in ("bt", "maxgap", "allpairs"):
            groups = _pairs_of(kept, labels, rng)
        else:
            raise SystemExit(f"unknown label scheme {labels!r}")
        pairs += [{"prompt": row["prompt"], "chosen": c[0], "rejected": r[0], "eos": bool(c[2] and r[2])}
                  for c, r in groups]
    return pairs


def gold_order(data: Path) -> np.ndarray:
    """+1 / -1 / 0: whether the gold reward prefers each validation pair's BT-chosen response (0 = a tie)."""
    reward = {}
    for row in _rows(data / "data" / "scored_val.jsonl"):
        reward[(row["prompt"], row["response"])] = row["reward"]
    return np.asarray([np.sign(reward[(p["prompt"], p["chosen"])] - reward[(p["prompt"], p["rejected"])])
                       for p in _rows(data / "data" / "pairs_val.jsonl")])


def accuracies(npz: Path, order: np.ndarray) -> tuple[float, float]:
    z = np.load(npz)
    margin = z["chosen"] - z["rejected"]
    decided = order != 0
    agree = lambda sign: np.where(margin == 0, 0.5, np.sign(margin) == sign)  # noqa: E731  (a tie is a coin flip)
    return float(np.mean(agree(1))), float(np.mean(agree(order)[decided]))


def run_recipe(name: str, data: Path, work: Path, model, batch: int) -> dict:
    from ivg_jax.training import TrainConfig, train

    labels, lr, beta, top, epochs, smoothing = RECIPES[name]
    out = work / "recipes" / name
    out.mkdir(parents=True, exist_ok=True)
    pairs_path = out / "train_pairs.jsonl"
    pairs = train_pairs(data, labels)
    if not pairs_path.exists():
        pairs_path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    steps_per_epoch = max(1, len(pairs) // batch)
    cfg = TrainConfig(objective="dpo", train_data=str(pairs_path), val_data=str(data / "data" / "pairs_val.jsonl"),
                      output_dir=str(out / "run"), max_length=24 + 64, batch_size=batch, epochs=epochs,
                      learning_rate=lr, beta=beta, label_smoothing=smoothing, train_top_blocks=top,
                      eval_every=max(1, steps_per_epoch // 2), save_every=10**6, keep_last=1, export=False)
    t0 = time.perf_counter()
    result = train(cfg, model=model, progress=False)
    seconds = time.perf_counter() - t0
    order = gold_order(data)
    curve = {int(p.stem): accuracies(p, order) for p in sorted((out / "run" / "validation").glob("*.npz"))}
    best = best_by_val_loss(out / "run")
    train_acc = _train_accuracy(cfg, result, pairs_path, model)
    return {"recipe": name, "labels": labels, "pairs": len(pairs), "lr": lr, "beta": beta, "top_blocks": top,
            "epochs": epochs, "best_step": best, "final_step": result.final_step,
            "acc_bt": curve.get(best, (float("nan"),) * 2)[0], "acc_argmax": curve.get(best, (float("nan"),) * 2)[1],
            "acc_bt_final": curve[max(curve)][0], "acc_argmax_final": curve[max(curve)][1],
            "curve": curve, "train_acc_final": train_acc, "seconds": seconds}


def best_by_val_loss(run_dir: Path) -> int:
    """The validated step with the lowest validation loss: the checkpoint the pipeline would keep (it saves at
    every validation; this benchmark saves only the last, so the trainer's own best is the final step)."""
    rows = [r for r in _rows(run_dir / "metrics.jsonl") if r.get("split") == "val" and r["step"] > 0]
    return min(rows, key=lambda r: r["loss"])["step"] if rows else 0


def _train_accuracy(cfg, result, pairs_path: Path, model) -> float:
    """Accuracy of the final weights on (up to 400 of) the recipe's own training pairs: the trainer's step-0
    validation of a job that starts from them (its one step changes nothing that is read)."""
    from ivg_jax.training import train

    rows = _rows(pairs_path)[:400]
    probe = pairs_path.with_name("train_probe.jsonl")
    probe.write_text("".join(json.dumps(p) + "\n" for p in rows))
    probe_cfg = dataclasses.replace(cfg, val_data=str(probe), output_dir=str(Path(cfg.output_dir).parent / "probe"),
                                    steps=1, epochs=1.0, learning_rate=1e-12, eval_every=10**6, save_every=10**6)
    train(probe_cfg, model=result.model, reference=model, progress=False)
    z = np.load(Path(probe_cfg.output_dir) / "validation" / "0.npz")
    return float(np.mean(np.where(z["chosen"] == z["rejected"], 0.5, z["chosen"] > z["rejected"])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="working directory (data and runs; rerun to resume)")
    p.add_argument("--data", default="", help="an existing sentiment run directory to take the samples and "
                   "validation pairs from (e.g. the fast preset's) instead of sampling new ones")
    p.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    work = Path(args.work)
    t0 = time.perf_counter()
    data = Path(args.data) if args.data else make_data(work, args.n_train, args.n_val, args.samples, args.tokens)
    print(f"data: {time.perf_counter() - t0:.0f} s", flush=True)
    import ivg_jax
    from ivg_jax.defaults import default_model_path

    model = ivg_jax.load_model(str(default_model_path()))
    names = [n for n in args.only.split(",") if n] or list(RECIPES)
    results = []
    for name in names:
        cached = work / "recipes" / name / "result.json"
        if cached.exists():
            r = json.loads(cached.read_text())
        else:
            r = run_recipe(name, data, work, model, args.batch)
            cached.write_text(json.dumps(r, indent=1))
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
    label = json.loads((data / "stages" / "label.json").read_text())
    sizes = json.loads((data / "config.json").read_text())
    lines = [f"Data ({data}): {sizes['n_train']} train / {sizes['n_val']} validation prompts x "
             f"{sizes['samples_per_prompt']} samples x {sizes['max_new_tokens']} tokens; validation: "
             f"{label['val']['pairs']} BT pairs "
             f"({label['val']['labels_agreeing_with_argmax']:.0%} agree with argmax).", "",
             "| recipe | train pairs | lr | beta | top blocks | best step / final | held-out acc (BT) "
             "| held-out acc (argmax) | at final step (BT / argmax) | train acc (final step) | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['recipe']} | {r['pairs']} | {r['lr']:g} | {r['beta']:g} | {r['top_blocks']} "
                     f"| {r['best_step']} / {r['final_step']} | {r['acc_bt']:.3f} | {r['acc_argmax']:.3f} "
                     f"| {r['acc_bt_final']:.3f} / {r['acc_argmax_final']:.3f} | {r['train_acc_final']:.3f} "
                     f"| {r['seconds']:.0f} |")
    table = "\n".join(lines)
    (work / "recipes.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
