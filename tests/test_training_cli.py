"""The train/ entry points: a tiny exported model trained from the command line (JSON summary, exit 0), and bad
input answered with one line and exit 2 before any model loads."""

import json
import os
import subprocess
import sys

from oracle import small_tmpfs
from synthetic import preference_records, tiny_model, write_jsonl

from ivg_jax.loading import export_hf

ROOT = os.path.dirname(os.path.dirname(__file__))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train", script), *args], capture_output=True,
                          text=True, env=ENV, timeout=300)


def test_dpo_command_trains_and_exports(tmp_path):
    export_hf(tiny_model(), tmp_path / "tiny")
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(16))
    proc = _run("dpo.py", "--model", str(tmp_path / "tiny"), "--train-data", data, "--val-data", data,
                "--output-dir", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4", "--max-length", "16",
                "--eval-every", "2", "--save-every", "1", "--train-top-blocks", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # --quiet: no progress bars, and no library logging (Orbax warned on each save between validations)
    assert proc.stderr.strip() == "", proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["final_step"] == 2 and summary["best_step"] == 2
    assert 0.0 <= summary["best_metrics"]["val_accuracy"] <= 1.0
    assert os.path.exists(os.path.join(summary["export_dir"], "model.safetensors"))


def test_bad_data_exits_2_with_one_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    proc = _run("reward.py", "--model", "/does/not/exist", "--train-data", str(path), "--output-dir",
                str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {path}:2: missing field 'rejected' (a preference record " \
                                                   "needs prompt, chosen, rejected)"


def test_examples_and_reference_are_checked_with_tokenizers_before_any_weights_load(tmp_path):
    """Both models' weight files are garbage: an over-long example and a reference of another vocabulary can
    only be found from their tokenizers and configs, and must be, before loading."""
    import shutil

    from oracle import word_tokenizer
    from synthetic import WORDS, tiny_config

    import ivg_jax

    def broken(model, name):
        export_hf(model, tmp_path / name)
        (tmp_path / name / "model.safetensors").write_bytes(b"not weights")
        return str(tmp_path / name)

    policy = broken(tiny_model(), "policy")
    other = broken(ivg_jax.init_model(tiny_config().replace(vocab_size=len(WORDS) + 1), 1,
                                      tokenizer=word_tokenizer([*WORDS, "extra"])), "other")
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "w1 " * 40, "chosen": "good", "rejected": "w2"}])
    short = write_jsonl(tmp_path / "short.jsonl", preference_records(4))
    cases = [(["--train-data", long], "long.jsonl:1: the prompt is"),
             (["--train-data", short, "--reference", other], "have different tokenizers")]
    for i, (flags, expected) in enumerate(cases):
        proc = _run("dpo.py", "--model", policy, "--output-dir", str(tmp_path / f"run{i}"), "--max-length", "16",
                    "--quiet", *flags)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
        assert not (tmp_path / f"run{i}" / "config.json").exists()
    shutil.rmtree(tmp_path / "policy")


def test_a_full_disk_stops_training_in_one_line_and_the_rerun_resumes(tmp_path):
    """The run directory sits on a small tmpfs with too little room for a checkpoint: one line (exit 2) before
    Orbax starts writing (a disk filling during its background save printed ~500 lines and exit 1); with space
    freed, the same command finishes and metrics.jsonl holds each step once."""
    with small_tmpfs(tmp_path / "small", "4m") as mount:
        export_hf(tiny_model(), tmp_path / "tiny")
        data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(16))
        filler = mount / "filler"
        filler.write_bytes(b"\0" * (4 * 1024 * 1024 - 512 * 1024))
        args = ("dpo.py", "--model", str(tmp_path / "tiny"), "--train-data", data, "--output-dir", str(mount / "run"),
                "--steps", "3", "--batch-size", "4", "--max-length", "16", "--save-every", "1", "--quiet")
        proc = _run(*args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "MiB are free" in lines[0], lines
        filler.unlink()
        proc = _run(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        steps = [json.loads(x)["step"] for x in open(mount / "run" / "metrics.jsonl")
                 if json.loads(x).get("split") == "train"]
        assert steps == [1, 2, 3]
