"""Bad input to `ivg decode|train|demo`: one stderr line naming the problem, exit 2, no traceback, and the
error arrives before any model loads (the model path does not exist, so reaching the loader would say so)."""

import subprocess
import sys

import pytest

ENV_ARGS = ["--model", "/nonexistent/model"]  # reaching the loader would fail with a different message


def _ivg(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ivg_jax.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "prompts.jsonl").write_text('{"prompt": "hello"}\n')
    (d / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    (d / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    (d / "adir").mkdir()
    return d


DECODE = ["decode", "--input", "{d}/prompts.jsonl", "--output", "{d}/out.jsonl"]
CASES = {
    "template with another field": (DECODE + ["--base-template", "{foo} {prompt}"], "only {prompt} is filled"),
    "template with a lone brace": (DECODE + ["--base-template", "a { {prompt}"], "literal brace"),
    "template without prompt": (DECODE + ["--guide-template", "hello"], "no '{prompt}' field"),
    "dtype float64": (DECODE + ["--dtype", "float64"], "dtype must be one of"),
    "beams 0": (DECODE + ["--beams", "0"], "beams must be >= 1"),
    "candidates 0": (DECODE + ["--candidates", "0"], "candidates must be >= 1"),
    "chunk length 0": (DECODE + ["--chunk-length", "0"], "chunk_length must be >= 1"),
    "max new tokens 0": (DECODE + ["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    "negative temperature": (DECODE + ["--temperature", "-1"], "temperature"),
    "nan temperature": (DECODE + ["--temperature", "nan"], "temperature"),
    "top-p 0": (DECODE + ["--top-p", "0"], "top_p"),
    "top-p 1.5": (DECODE + ["--top-p", "1.5"], "top_p"),
    "top-k -1": (DECODE + ["--top-k", "-1"], "top_k"),
    "num shards 0": (DECODE + ["--num-shards", "0"], "num_shards must be >= 1"),
    "input not UTF-8": (["decode", "--input", "{d}/latin1.jsonl", "--output", "{d}/o2.jsonl"], "UTF-8"),
    "input is a directory": (["decode", "--input", "{d}/adir", "--output", "{d}/o3.jsonl"], "adir"),
    "train template field": (["train", "dpo", "--train-data", "{d}/pairs.jsonl", "--output-dir", "{d}/run",
                              "--template", "{x}{prompt}"], "only {prompt} is filled"),
    "train dtype": (["train", "dpo", "--train-data", "{d}/pairs.jsonl", "--output-dir", "{d}/run2",
                     "--dtype", "float64"], "dtype must be"),
    "demo template": (["demo", "--preset", "smoke", "--run-dir", "{d}/demo", "--base-template", "{a}{prompt}"],
                      "only {prompt} is filled"),
    "demo dtype": (["demo", "--preset", "smoke", "--run-dir", "{d}/demo2", "--dtype", "int8"], "dtype must be"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_before_loading(case, files):
    args, expected = CASES[case]
    args = [a.format(d=files) if a.startswith("{d}") else a for a in args]
    if args[0] in ("decode", "train"):
        args += ENV_ARGS
    before = (files / "prompts.jsonl").read_bytes()
    r = _ivg(*args, cwd=files)
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith(("WARNING", "W0000", "I0000"))]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert expected in lines[0], lines[0]
    assert "nonexistent" not in lines[0] or case.startswith("input"), "checked only after reaching the loader"
    assert (files / "prompts.jsonl").read_bytes() == before
