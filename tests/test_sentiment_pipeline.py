"""The sentiment pipeline end to end on a tiny random model (word-level tokenizer with sentiment words, so VADER
has something to judge): every stage on real files, each stage's output contract checked, then resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from oracle import word_tokenizer

import ivg_jax
from ivg_jax.config import ModelConfig
from ivg_jax.evaluation.sentiment import VaderReward
from ivg_jax.experiments.sentiment import DEFAULT_METHODS, SentimentConfig, run
from ivg_jax.experiments.sentiment.pipeline import read_jsonl
from ivg_jax.loading import export_hf
from ivg_jax.training.data import check_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["<pad>", "<eos>", "<unk>", "good", "great", "love", "wonderful", "awful", "bad", "boring", "terrible",
         "the", "movie", "film", "was", "is", "and", "a", "plot", "acting", "story", "music", "very", "not", "it"]
TINY = ModelConfig(family="llama", vocab_size=len(WORDS), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                   d_ff=64, eos_token_ids=(1,), pad_token_id=0)


def four_prompts(directory):
    """The same four prompts as every split of a tiny run: the prompts directory."""
    directory.mkdir()
    for split in ("train", "val", "test"):
        (directory / f"{split}.txt").write_text("the movie was\nthe plot is\nit was very\na story and\n")
    return directory


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    export_hf(ivg_jax.init_model(TINY, seed=0, tokenizer=word_tokenizer(WORDS)), root / "tiny")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        prompts = [" ".join(rng.choice(WORDS[11:], 3)) for _ in range(n)]
        (root / "prompts").mkdir(exist_ok=True)
        (root / "prompts" / f"{split}.txt").write_text("\n".join(prompts) + "\n")
    settings = dict(run_dir=str(root / "run"), model=str(root / "tiny"), prompts_dir=str(root / "prompts"), n_train=8,
                    n_val=4, n_test=4, samples_per_prompt=4, max_new_tokens=6, beams=2, candidates=2, chunk_length=3,
                    bon_n=4,
                    train_batch_size=4, train_top_blocks=1, dpo_epochs=2.0, fudge_epochs=2.0, sample_batch=4,
                    decode_batch=4, base_template="the {prompt}", dpo_pairs="bt",  # the paper's pairs
                    methods=",".join(DEFAULT_METHODS))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    t0 = time.perf_counter()
    # The main job's command line, as a user runs it (the full preset's settings overridden by the tiny ones).
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "decode", "sentiment.py"), "--preset", "full",
                           "--quiet", *flags], capture_output=True, text=True, timeout=600, cwd=ROOT)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = SentimentConfig(**settings)
    summaries = {p.stem: json.loads(p.read_text()) for p in (config.path / "stages").glob("*.json")}
    return config, summaries, seconds, proc.stdout


def test_every_stage_meets_its_contract(pipeline_run):
    cfg, summaries, seconds, stdout = pipeline_run
    d = cfg.path
    assert set(summaries) == {"sample", "label", "dpo", "fudge", "decode", "evaluate"}
    assert all(x["sittings"] == 1 and 0 <= x["seconds"] < seconds for x in summaries.values())
    gold = VaderReward()
    # sample: four scored responses per prompt, rewards are VADER's on prompt + response
    samples = read_jsonl(d / "samples" / "train.jsonl")
    assert [s["prompt"] for s in samples] == (d.parent / "prompts" / "train.txt").read_text().split("\n")[:8]
    for s in samples:
        assert len(s["responses"]) == 4 and len(s["rewards"]) == 4
        np.testing.assert_allclose(s["rewards"], gold([s["prompt"] + t for t in s["responses"]]))
    # label: valid training records; a prompt's pairs are (1st, 2nd) and (3rd, 4th) of its non-empty responses
    for split in ("train", "val"):
        pairs = read_jsonl(d / "data" / f"pairs_{split}.jsonl")
        for r in pairs:
            check_record(r, "preference")
        for s in read_jsonl(d / "samples" / f"{split}.jsonl"):
            kept = [t for t in s["responses"] if t.strip()]
            mine = [{r["chosen"], r["rejected"]} for r in pairs if r["prompt"] == s["prompt"]]
            expected = [{a, b} for a, b in zip(kept[0::2], kept[1::2])]
            assert sorted(map(sorted, mine)) == sorted(map(sorted, expected))
        for r in read_jsonl(d / "data" / f"scored_{split}.jsonl"):
            check_record(r, "scored")
    # dpo / fudge: exported guides that load, an LM and a value model
    tuned = ivg_jax.load_model(str(d / "dpo" / "export"))
    value = ivg_jax.load_model(str(d / "fudge" / "export"))
    assert tuned.config.head == "lm" and value.config.head == "value"
    assert summaries["dpo"]["best_metrics"]["val_accuracy"] is not None
    assert "val_baseline_mse" in summaries["fudge"]["best_metrics"]
    # decode: every method, every test prompt, within the token budget; search methods cost more compute
    decoded = {m: read_jsonl(d / "decode" / f"{m}.jsonl") for m in DEFAULT_METHODS}
    for m, rows in decoded.items():
        assert len(rows) == 4 and all(len(r["tokens"]) <= 6 for r in rows), m
    assert decoded["base"][0]["kl"] == 0.0 and decoded["eft"][0]["kl"] > -1e-4  # KL >= 0 up to float rounding
    cost = {m: rows[0]["forward_tokens"] for m, rows in decoded.items()}
    assert cost["bon"] > cost["base"] and cost["ivg"] > cost["cbs_explicit"] > cost["base"]
    # evaluate: a table row per method, the numbers recomputable from the decode files, plots written
    results = json.loads((d / "results.json").read_text())
    for m in DEFAULT_METHODS:
        rows = decoded[m]
        assert results[m]["reward"] == pytest.approx(np.mean(gold([r["prompt"] + r["text"] for r in rows])))
        assert results[m]["reward_ci"][0] <= results[m]["reward"] <= results[m]["reward_ci"][1]
    # IVG minus each method, paired over the same prompts
    ivg_rewards = gold([r["prompt"] + r["text"] for r in decoded["ivg"]])
    for m in DEFAULT_METHODS:
        if m != "ivg":
            diff = ivg_rewards - gold([r["prompt"] + r["text"] for r in decoded[m]])
            mean, lo, hi = results["ivg"]["minus"][m]
            assert mean == pytest.approx(diff.mean()) and lo <= mean <= hi
    # and EFT minus the base: the implicit guide's own effect
    eft_diff = gold([r["prompt"] + r["text"] for r in decoded["eft"]]) - gold([r["prompt"] + r["text"]
                                                                                for r in decoded["base"]])
    mean, lo, hi = results["eft"]["minus"]["base"]
    assert mean == pytest.approx(eft_diff.mean()) and lo <= mean <= hi
    table = (d / "results.md").read_text().strip().splitlines()
    assert len(table) == 2 + len(DEFAULT_METHODS) + 3 + (len(DEFAULT_METHODS) - 1) + 1
    assert table[-1].startswith("| EFT − base (plain sampling) |")
    assert "\n".join(table) in stdout  # the command ends by printing the table
    assert (d / "reward_vs_kl.png").stat().st_size > 0 and (d / "reward_vs_compute.png").stat().st_size > 0


def test_rerun_resumes_and_redoes_only_what_is_missing(pipeline_run):
    cfg, _, _, _ = pipeline_run
    d = cfg.path
    before = (d / "decode" / "ivg.jsonl").read_text()
    (d / "decode" / "ivg.jsonl").unlink()
    (d / "stages" / "decode.json").unlink()
    (d / "stages" / "evaluate.json").unlink()
    stamp = (d / "decode" / "base.jsonl").stat().st_mtime_ns
    lines = []
    run(cfg, progress=False, log=lines.append)
    assert (d / "decode" / "ivg.jsonl").read_text() == before  # its parts were kept: same rows, not re-decoded
    assert (d / "decode" / "base.jsonl").stat().st_mtime_ns == stamp
    assert sum("done earlier" in x for x in lines) == 4
    # the clock adds this sitting to the first one's time for the redone stages only
    decode = json.loads((d / "stages" / "decode.json").read_text())
    assert decode["sittings"] == 2 and decode["ivg"]["sittings"] == 2 and decode["base"]["sittings"] == 1
    assert json.loads((d / "stages" / "dpo.json").read_text())["sittings"] == 1
    with pytest.raises(ivg_jax.IvgError, match="other settings"):
        run(SentimentConfig(**{**cfg.__dict__, "n_test": 3}), progress=False)


def test_baselines_at_ivg_compute_can_be_added_to_a_finished_run(pipeline_run):
    cfg, _, _, _ = pipeline_run
    d = cfg.path
    stamp = (d / "decode" / "ivg.jsonl").stat().st_mtime_ns
    more = SentimentConfig(**{**cfg.__dict__, "methods": cfg.methods + ",bon_matched,cbs_explicit_matched"})
    lines = []
    run(more, progress=False, log=lines.append)
    assert sum("done earlier" in x for x in lines) == 4  # sample, label and both guides are reused
    assert (d / "decode" / "ivg.jsonl").stat().st_mtime_ns == stamp
    results = json.loads((d / "results.json").read_text())
    # IVG: 4 models over W*K = 4 rows; the matched baselines: 2 models over 8 rows (best-of-8, W=2 x K=4)
    cost = {m: results[m]["forward_tokens"] for m in ("ivg", "bon_matched", "cbs_explicit_matched", "bon")}
    assert cost["bon_matched"] > 1.5 * cost["bon"]  # twice the samples; the prompt is read once either way
    for m in ("bon_matched", "cbs_explicit_matched"):
        assert 0.75 < cost[m] / cost["ivg"] < 1.25, cost
        assert m in results["ivg"]["minus"]
    table = (d / "results.md").read_text()
    assert "best-of-8 (explicit value, IVG's compute)" in table and "CBS explicit, K = 4 (IVG's compute)" in table
    run(cfg, progress=False, log=lines.append)  # a subset of the methods: nothing to redo
    assert json.loads((d / "results.json").read_text()).keys() == results.keys()


def test_sigterm_interrupts_like_ctrl_c_and_the_clock_keeps_the_sitting(tmp_path):
    # In process: the CLI's handler turns SIGTERM into KeyboardInterrupt, and the stage's stopwatch still records.
    from ivg_jax.cli.main import _sigterm_interrupts
    from ivg_jax.experiments.sentiment.pipeline import _stopwatch

    cfg = SentimentConfig(run_dir=str(tmp_path / "run"))
    cfg.path.mkdir()
    previous = signal.getsignal(signal.SIGTERM)
    slept_through = False
    try:
        _sigterm_interrupts()
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            with _stopwatch(cfg, "decode/ivg"):
                time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
                slept_through = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not slept_through
    entry = json.loads((cfg.path / "clock.json").read_text())["decode/ivg"]
    assert entry["sittings"] == 1 and entry["seconds"] >= 0.05


def test_command_rejects_bad_settings_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "decode", "sentiment.py"), "--methods", "base,magic",
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown methods ['magic']")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("scheme, expected", [
    ("maxgap", [("b", "d")]),
    ("allpairs", [("a", "c"), ("b", "a"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]),
])
def test_training_pair_schemes(scheme, expected):
    """Hand-derived pairs of four samples with rewards a 1, b 3, c 0, d -2 and a tie e = a."""
    from ivg_jax.experiments.sentiment.pipeline import _pairs_of

    kept = [("a", 1.0, True), ("b", 3.0, True), ("c", 0.0, False), ("d", -2.0, True), ("e", 1.0, True)]
    got = [(c[0], r[0]) for c, r in _pairs_of(kept, scheme, np.random.default_rng(0))]
    if scheme == "allpairs":  # e ties a and is otherwise a's twin
        expected = expected + [("b", "e"), ("e", "c"), ("e", "d")]
    assert sorted(got) == sorted(expected)


def test_bt_pairs_are_disjoint_and_follow_the_reward():
    from ivg_jax.experiments.sentiment.pipeline import _pairs_of

    kept = [("a", 5.0, True), ("b", -5.0, True), ("c", 0.0, True), ("d", 0.0, True), ("e", 1.0, True)]
    firsts = [_pairs_of(kept, "bt", np.random.default_rng(s)) for s in range(400)]
    assert all([{c[0], r[0]} for c, r in p] == [{"a", "b"}, {"c", "d"}] for p in firsts)
    a_wins = np.mean([p[0][0][0] == "a" for p in firsts])
    c_wins = np.mean([p[1][0][0] == "c" for p in firsts])
    assert a_wins > 0.98 and 0.4 < c_wins < 0.6  # sigmoid(10) and sigmoid(0)


def test_weak_to_strong_guides_start_from_the_guide_model(tmp_path):
    """`guide_model`: the data are sampled from the guide model, both guides start from it and it is the
    implicit guide's reference; the base only decodes (and judges fluency)."""
    from ivg_jax.experiments.sentiment.pipeline import Models, _hash_seed, load_prompts, method_setup

    tok = word_tokenizer(WORDS)
    strong = TINY.replace(d_model=48, n_layers=3, head_dim=12)
    export_hf(ivg_jax.init_model(strong, seed=1, tokenizer=tok), tmp_path / "strong")
    export_hf(ivg_jax.init_model(TINY, seed=2, tokenizer=tok), tmp_path / "weak")
    prompts = four_prompts(tmp_path / "prompts")
    cfg = SentimentConfig(run_dir=str(tmp_path / "run"), model=str(tmp_path / "strong"),
                          guide_model=str(tmp_path / "weak"), prompts_dir=str(prompts), n_train=4, n_val=4, n_test=2,
                          samples_per_prompt=2, max_new_tokens=4, beams=2, candidates=2, chunk_length=2, bon_n=2,
                          train_batch_size=2, train_top_blocks=1, dpo_epochs=1.0, fudge_epochs=1.0, sample_batch=4,
                          decode_batch=2, methods="eft,ivg,bon_matched,bon_guide", base_template="the {prompt}")
    run(cfg, progress=False, log=lambda _: None)

    # The data: the guide model's samples (same seeds, sampled directly).
    models = Models(cfg)
    first = load_prompts(cfg, "train")[0]
    seeds = [_hash_seed(cfg.seed, "train", 0, j) % 2**31 for j in range(2)]
    settings = cfg.sample_settings
    direct = settings.decode(models.guide(), [first, first], settings.guidance(), seeds)
    assert read_jsonl(cfg.path / "samples" / "train.jsonl")[0]["responses"] == direct.texts
    # Both guides have the guide model's architecture; the reference is the guide model itself.
    for stage in ("dpo", "fudge"):
        exported = ivg_jax.load_model(str(cfg.path / stage / "export"))
        assert (exported.config.d_model, exported.config.n_layers) == (32, 2), stage
    _, guidance = method_setup(cfg, models, "ivg")
    assert guidance.implicit[0].reference is models.guide() and models.base().config.d_model == 48
    assert all((cfg.path / "decode" / f"{m}.jsonl").exists() for m in ("eft", "ivg"))

    # The weak model's own best-of-N: sampled from it (not the base), the value model choosing.
    bon_guide = read_jsonl(cfg.path / "decode" / "bon_guide.jsonl")
    settings, guidance = method_setup(cfg, models, "bon_guide")
    test = load_prompts(cfg, "test")
    seeds = [_hash_seed(cfg.seed, "test", i) % 2**31 for i in range(len(test))]
    assert [r["text"] for r in bon_guide] == settings.decode(models.guide(), test, guidance, seeds).texts

    # Compute in base-forward tokens. FLOPs per token by hand (2 x weights of the projections, MLP and head):
    # strong 2 x (3 x (48*12*(2*4 + 2*2) + 3*48*64) + 48*25) = 99168; weak 2 x (2 x (32*8*12 + 3*32*64) + 32*25)
    # = 38464 (the value head is vocab-sized: the same).
    strong_flops, weak_flops = 99168, 38464
    results = json.loads((cfg.path / "results.json").read_text())
    factors = {"ivg": (strong_flops + 3 * weak_flops) / (4 * strong_flops),
               "eft": (strong_flops + 2 * weak_flops) / (3 * strong_flops),
               "bon_matched": (strong_flops + weak_flops) / (2 * strong_flops),
               "bon_guide": 1.0 * weak_flops / strong_flops}
    for method, factor in factors.items():
        r = results[method]
        assert r["compute"] == pytest.approx(r["forward_tokens"] * factor, rel=1e-9), method
    # Best-of-N at IVG's compute: N = W K (F_s + 3 F_w) / (F_s + F_w) = 4 x 1.559 -> 6, not the same-size 8.
    assert cfg.matched_bon_n == 6
    assert "best-of-6 (explicit value, IVG's compute)" in (cfg.path / "results.md").read_text()
    assert "bon_guide" in results["ivg"]["minus"]


def test_decode_dtype_decodes_in_bfloat16_what_was_trained_and_is_scored_in_float32(tmp_path, monkeypatch):
    """`decode_dtype="bfloat16"`: the decode stage's models (base and fp32-trained guides) load in bfloat16, and
    only there: the samples, the guides' training and exports and the evaluation's NLL stay float32. With
    `unroll_layers` the decode (on per-layer weights) equals the engine's on stacked ones. The decode stage's
    weights are freed before the evaluation loads its own (two sets would not fit the weak-to-strong run)."""
    import gc
    import weakref

    import jax
    import jax.numpy as jnp

    from ivg_jax.evaluation.metrics import continuation_nll
    from ivg_jax.experiments.sentiment import pipeline
    from ivg_jax.experiments.sentiment.pipeline import Models, _hash_seed, load_prompts, method_setup

    decode_weights, alive_at_evaluate = [], []

    def decode(cfg, models, progress, stage=pipeline.STAGE_FNS["decode"]):
        summary = stage(cfg, models, progress)
        decode_weights.extend(weakref.ref(leaf) for name in ("base", "tuned", "value")
                              for leaf in jax.tree.leaves(models._cache[name].params))
        return summary

    def evaluate(cfg, models, progress, stage=pipeline.STAGE_FNS["evaluate"]):
        gc.collect()
        alive_at_evaluate.extend(ref() for ref in decode_weights if ref() is not None)
        return stage(cfg, models, progress)

    monkeypatch.setitem(pipeline.STAGE_FNS, "decode", decode)
    monkeypatch.setitem(pipeline.STAGE_FNS, "evaluate", evaluate)

    export_hf(ivg_jax.init_model(TINY, seed=3, tokenizer=word_tokenizer(WORDS)), tmp_path / "tiny")
    prompts = four_prompts(tmp_path / "prompts")
    cfg = SentimentConfig(run_dir=str(tmp_path / "run"), model=str(tmp_path / "tiny"), prompts_dir=str(prompts),
                          n_train=4, n_val=4, n_test=4, samples_per_prompt=2, max_new_tokens=4, beams=2, candidates=2,
                          chunk_length=2, train_batch_size=2, train_top_blocks=1, dpo_epochs=1.0, fudge_epochs=1.0,
                          sample_batch=4, decode_batch=4, methods="ivg", base_template="the {prompt}",
                          decode_dtype="bfloat16", unroll_layers=True)
    run(cfg, progress=False, log=lambda _: None)

    assert len(decode_weights) > 3 * 2 * TINY.n_layers and alive_at_evaluate == []
    assert cfg.stage_weights("decode") == ("bfloat16", True)  # per-layer weights: no per-call copy when unrolled
    full, half = Models(cfg), Models(cfg, ("bfloat16", False))
    for stage in ("dpo", "fudge"):
        exported = ivg_jax.load_model(str(cfg.path / stage / "export"))
        assert exported.dtype == jnp.float32, stage
    assert half.tuned().dtype == half.base().dtype == jnp.bfloat16
    # The samples: the float32 model's (same seeds, sampled directly).
    first = load_prompts(cfg, "train")[0]
    settings = cfg.sample_settings
    seeds = [_hash_seed(cfg.seed, "train", 0, j) % 2**31 for j in range(2)]
    direct = settings.decode(full.guide(), [first, first], settings.guidance(), seeds)
    assert read_jsonl(cfg.path / "samples" / "train.jsonl")[0]["responses"] == direct.texts
    # The decode: IVG with every model in bfloat16, the same seeds.
    rows = read_jsonl(cfg.path / "decode" / "ivg.jsonl")
    settings, guidance = method_setup(cfg, half, "ivg")
    test = load_prompts(cfg, "test")
    seeds = [_hash_seed(cfg.seed, "test", i) % 2**31 for i in range(len(test))]
    out = settings.decode(half.base(), test, guidance, seeds)
    assert [r["tokens"] for r in rows] == [out.tokens[i, :out.lengths[i]].tolist() for i in range(len(test))]
    # (tiny models pick the same tokens in either dtype; their chunk scores and KL tell the dtypes apart)
    assert [r["score"] for r in rows] == pytest.approx(out.scores.tolist(), rel=1e-6, abs=1e-6)
    assert [r["kl"] for r in rows] == pytest.approx(out.kl.sum(-1).tolist(), rel=1e-6, abs=1e-6)
    # The evaluation: NLL of those tokens under the float32 base.
    nll = continuation_nll(full.base(), test, [r["tokens"] for r in rows], cfg.base_template)
    results = json.loads((cfg.path / "results.json").read_text())
    assert results["ivg"]["nll"] == pytest.approx(float(np.nanmean(nll)), rel=1e-6)


def test_a_guide_of_another_tokenizer_is_scored_on_the_base_tokens_of_its_text(tmp_path):
    """The NLL under the base of the guide model's own samples (`bon_guide`) reads the base's token ids: the
    decoder's ids when the two share a vocabulary, the text re-tokenised by the base's tokenizer when not (the
    guide's ids would be other words of the base's vocabulary — a cross-vocabulary run scored 10.97 nats/token
    instead of 2.88)."""
    from ivg_jax.experiments.sentiment.pipeline import Models, response_ids

    other_words = ["<pad>", "</s>", "<unk>"] + sorted(set(WORDS[3:]), reverse=True)
    cfg = ModelConfig(family="llama", vocab_size=len(WORDS), d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                      head_dim=8, d_ff=16, eos_token_ids=(1,), pad_token_id=0)
    base_tok, guide_tok = word_tokenizer(WORDS), word_tokenizer(other_words)
    for name, tok in (("base", base_tok), ("same", word_tokenizer(WORDS)), ("other", guide_tok)):
        export_hf(ivg_jax.init_model(cfg.replace(vocab_size=len(tok)), tokenizer=tok), tmp_path / name)
    text = " " + " ".join(WORDS[5:9])
    rows = [{"text": text, "tokens": guide_tok(text, add_special_tokens=False)["input_ids"]}]
    assert rows[0]["tokens"] != base_tok(text, add_special_tokens=False)["input_ids"]

    def ids(guide: str, method: str):
        models = Models(SentimentConfig(run_dir=str(tmp_path / "run"), model=str(tmp_path / "base"),
                                        guide_model=str(tmp_path / guide)))
        return response_ids(models, method, rows)

    assert ids("other", "bon_guide") == [base_tok(text, add_special_tokens=False)["input_ids"]]
    assert ids("same", "bon_guide") == ids("other", "bon") == [rows[0]["tokens"]]  # the decoder's own ids
