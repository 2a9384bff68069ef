"""The `ivg` command through subprocesses on tiny models: help, decode (resumable after SIGKILL, shardable),
every train command, eval, and one-line errors for bad configs naming the key or path."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from oracle import small_tmpfs
from synthetic import preference_records, scored_records, tiny_model, write_jsonl

from ivg_jax.loading import export_hf
from ivg_jax.model.api import attach_head

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def ivg(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ivg_jax.cli.main", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    base = tiny_model(seed=0)
    export_hf(base, root / "base")
    export_hf(tiny_model(seed=1), root / "tuned")
    export_hf(attach_head(base, "value", scale=0.3, seed=2), root / "value")
    write_jsonl(root / "prompts.jsonl", [{"id": "p0", "prompt": "w1 w2"}])
    # Many small batches, so a kill lands mid-dataset however fast the machine decodes.
    write_jsonl(root / "many.jsonl", [{"id": f"q{i}", "prompt": f"w{i % 20} w{(7 * i) % 20}"} for i in range(MANY)])
    return root


MANY = 96  # 24 batches of 4


@pytest.fixture(scope="module")
def straight(world):
    """The many-prompt job decoded in one uninterrupted, unsharded run: what resumed and sharded runs must equal."""
    out = world / "straight.jsonl"
    proc = ivg(*_decode_flags(world, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _rows(out)


def _decode_flags(world, output):
    return ["decode", "--input", world / "many.jsonl", "--output", output, "--model", world / "base",
            "--tuned", world / "tuned", "--reference", world / "base", "--value", world / "value",
            "--token", "implicit", "--chunk", "explicit", "--beams", "2", "--candidates", "2", "--chunk-length", "2",
            "--max-new-tokens", "6", "--batch-size", "4", "--quiet"]


def _rows(path):
    return [json.loads(x) for x in open(path)]


def test_help_lists_commands_and_defaults():
    out = ivg("--help").stdout
    for command in ("decode", "train", "eval", "demo", "recipe", "bench"):
        assert command in out
    out = ivg("decode", "--help").stdout
    assert "--chunk-length" in out and "(default: 0.7)" in out and "--config" in out and "--debug" in out


def test_decode_killed_mid_dataset_resumes_to_the_uninterrupted_output(world, straight, tmp_path):
    assert [r["id"] for r in straight] == [f"q{i}" for i in range(MANY)]
    assert len({r["config"] for r in straight}) == 1 and all("score" in r and "kl" in r for r in straight)

    killed = tmp_path / "killed.jsonl"
    flags = _decode_flags(world, killed)
    p = subprocess.Popen([sys.executable, "-m", "ivg_jax.cli.main", *map(str, flags)],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not killed.exists() or killed.read_text().count("\n") < 8):
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    p.wait()
    written = len(killed.read_text().splitlines())
    assert 8 <= written < MANY, f"the job was killed after {written} lines; the test needs it mid-dataset"
    proc = ivg(*flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _rows(killed) == straight  # same ids, order, texts and scores; nothing lost or duplicated


def test_decode_shards_split_prompts_by_id(world, straight, tmp_path):
    out = tmp_path / "sharded.jsonl"
    flags = _decode_flags(world, out)
    for i in range(2):
        assert ivg(*flags, "--num-shards", 2, "--shard-index", i).returncode == 0
    shards = [_rows(tmp_path / f"sharded.shard{i}-of-2.jsonl") for i in range(2)]
    ids = [r["id"] for s in shards for r in s]
    assert sorted(ids) == sorted(f"q{i}" for i in range(MANY)) and all(shards)
    # A prompt's result depends on its id and seed only, not on which shard or batch decoded it.
    by_id = {r["id"]: r for r in straight}
    assert all(r == by_id[r["id"]] for s in shards for r in s)


@pytest.mark.parametrize("objective, records", [
    ("sft", lambda: [{"prompt": r["prompt"], "response": r["chosen"]} for r in preference_records(8)]),
    ("dpo", lambda: preference_records(8)),
    ("value", lambda: scored_records(8)),
    ("rm", lambda: preference_records(8)),
])
def test_each_train_command(world, tmp_path, objective, records):
    data = write_jsonl(tmp_path / "data.jsonl", records())
    config = tmp_path / "train.toml"
    config.write_text(f'train_data = "{data}"\nsteps = 2\nbatch_size = 4\nmax_length = 16\n')
    proc = ivg("train", objective, "--config", config, "--model", world / "base", "--output-dir", tmp_path / "run",
               "--val-data", data, "--eval-every", 2, "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["final_step"] == 2 and os.path.isdir(summary["export_dir"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["steps"] == 2 and saved["batch_size"] == 4  # from the file
    assert saved["objective"] == {"sft": "sft", "dpo": "dpo", "value": "fudge", "rm": "reward"}[objective]


def test_eval_summarises_a_decode_file(world, tmp_path):
    rows = [{"id": str(i), "prompt": "The film was", "output": text, "kl": 1.0, "forward_tokens": 10}
            for i, text in enumerate([" great and wonderful", " awful", " fine"])]
    write_jsonl(tmp_path / "out.jsonl", rows)
    proc = ivg("eval", "--input", tmp_path / "out.jsonl", "--output", tmp_path / "summary.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    from ivg_jax.evaluation.sentiment import VaderReward

    expected = VaderReward()([r["prompt"] + r["output"] for r in rows]).mean()
    assert summary["n"] == 3 and summary["reward"] == pytest.approx(expected) and summary["kl"] == 1.0


@pytest.mark.parametrize("config_text, flags, message", [
    ("beems = 2\n", [], "unknown option 'beems'"),
    ("beams = \"two\"\n", [], "option 'beams' must be int, got str ('two')"),
    ("", ["--input", "/no/such/prompts.jsonl"], "input file /no/such/prompts.jsonl does not exist"),
    ("", ["--model", "/no/such/checkpoint"], "/no/such/checkpoint"),
    # refused before any model loads: the missing checkpoint would be the error otherwise
    ("", ["--temperature", "nan", "--model", "/no/such/checkpoint"], "temperature=nan must be a finite number"),
    ("", ["--top-p", "0", "--model", "/no/such/checkpoint"], "top_p=0.0 must be in (0, 1]"),
    ("", ["--top-k", "-1", "--model", "/no/such/checkpoint"], "top_k=-1 must be >= 1"),
    ("", ["--num-shards", "0", "--model", "/no/such/checkpoint"], "num_shards must be >= 1"),
])
def test_bad_configs_give_one_line(world, tmp_path, config_text, flags, message, ivg_main):
    config = tmp_path / "job.yaml"
    config.write_text(config_text.replace(" = ", ": ").replace('"', ""))
    args = ["decode", "--config", config, "--input", world / "prompts.jsonl", "--output", tmp_path / "o.jsonl",
            *flags]
    code, stderr = ivg_main(*args)
    assert code == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    with pytest.raises(Exception, match=re.escape(message)):  # --debug: the exception itself, with its traceback
        ivg_main(*args, "--debug")


def test_missing_config_file(tmp_path):
    proc = ivg("train", "dpo", "--config", tmp_path / "nope.toml")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: config file {tmp_path / 'nope.toml'} does not exist"


@pytest.mark.parametrize("command", [["decode"], ["train", "dpo"], ["eval"], ["demo"]])
def test_help_explains_every_option(command):
    import re

    out = ivg(*command, "--help").stdout
    blocks, current = {}, None
    for line in out[out.index("options:"):].splitlines()[1:]:
        m = re.match(r"^  (--[a-z-]+|-h, --help)(.*)$", line)
        if m:
            current = m.group(1)
            blocks[current] = m.group(2)
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
    assert len(blocks) >= 6
    for flag, text in blocks.items():
        # words of explanation besides the metavar and the default
        explanation = re.sub(r"^\s*(\{[^}]*\}|[A-Z_]+)\s", "", text)  # the metavar
        words = [w for w in re.sub(r"\(default: [^)]*\)", "", explanation).split() if w.isalpha()]
        assert len(words) >= 2, f"{' '.join(command)} {flag} has no explanation: {text!r}"


def test_two_decode_jobs_on_one_output_write_each_id_once(world, straight, tmp_path):
    out = tmp_path / "shared.jsonl"
    flags = _decode_flags(world, out)
    # Deterministic half: while another writer holds the file, a job is refused at once and changes nothing.
    import fcntl

    out.write_bytes(b"")
    with out.open("a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        proc = ivg(*flags)
    assert proc.returncode == 2 and "another decode job is writing" in proc.stderr, proc.stderr[-2000:]
    assert out.read_bytes() == b""
    # Racing half: two real jobs started together; whichever way the race goes, each id is written once.
    jobs = [subprocess.Popen([sys.executable, "-m", "ivg_jax.cli.main", *map(str, flags)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = sorted(j.wait(timeout=300) for j in jobs)
    assert codes in ([0, 0], [0, 2]), codes
    assert _rows(out) == straight


def test_resume_after_a_blank_last_line(world, straight, tmp_path):
    out = tmp_path / "blank.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in straight[:10]) + "\n")
    proc = ivg(*_decode_flags(world, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [json.loads(x) for x in out.read_text().splitlines() if x.strip()] == straight


def test_a_full_disk_is_one_line_and_the_rerun_completes_the_file(world, straight, tmp_path):
    """The output lives on a small tmpfs with room for about half of it: the job stops with one line (exit 2), the
    rows it wrote are whole rows of the uninterrupted output, and once space is freed the same command completes
    the file with every id once."""
    with small_tmpfs(tmp_path / "small", "1m") as mount:
        need = sum(len(json.dumps(r)) + 1 for r in straight)
        filler = mount / "filler"
        filler.write_bytes(b"\0" * (1024 * 1024 - (need // 2 // 4096 + 1) * 4096))
        out = mount / "out.jsonl"
        proc = ivg(*_decode_flags(world, out))
        lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith(("WARNING", "W0000", "I0000"))]
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and len(lines) == 1, lines
        assert lines[0].startswith("error: No space left on device") and "free disk space" in lines[0], lines[0]
        whole = [json.loads(x) for x in out.read_text().splitlines(keepends=True) if x.endswith("\n")]
        assert 0 < len(whole) < len(straight) and whole == straight[:len(whole)]
        filler.unlink()
        proc = ivg(*_decode_flags(world, out))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _rows(out) == straight


def test_prompts_and_vocabularies_are_checked_with_tokenizers_before_any_weights_load(world, tmp_path):
    """Every model's weights file is garbage: the errors below can only come from the tokenizers and configs."""
    import shutil

    from oracle import word_tokenizer
    from synthetic import WORDS, tiny_config

    import ivg_jax

    def broken(name, model_dir):
        shutil.copytree(model_dir, tmp_path / name)
        (tmp_path / name / "model.safetensors").write_bytes(b"not weights")
        return tmp_path / name

    base = broken("base", world / "base")
    other_vocab = ivg_jax.init_model(tiny_config().replace(vocab_size=len(WORDS) + 1), 3,
                                     tokenizer=word_tokenizer([*WORDS, "extra"]))
    export_hf(other_vocab, tmp_path / "other_src")
    other = broken("other", tmp_path / "other_src")
    context = ivg_jax.load_model(world / "base").config.max_positions
    write_jsonl(tmp_path / "long.jsonl", [{"id": "a", "prompt": "w1 w2"}, {"id": "b", "prompt": "w1 " * context}])
    cases = [
        (["--input", tmp_path / "long.jsonl", "--model", base], "prompt 1 ("),
        (["--input", world / "prompts.jsonl", "--model", base, "--tuned", other, "--reference", other,
          "--token", "implicit"], "does not share the base's vocabulary"),
    ]
    for i, (flags, expected) in enumerate(cases):
        out = tmp_path / f"out{i}.jsonl"
        proc = ivg("decode", "--output", out, "--quiet", *flags)
        lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith(("WARNING", "W0000", "I0000"))]
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and "not weights" not in lines[0]
        assert not out.exists() or out.read_bytes() == b""
