"""Bad input to `ivg decode|train|eval|demo|recipe`: one stderr line naming the problem, exit 2, no traceback, and the
error arrives before any model loads (the model path does not exist, so reaching the loader would say so).

Every case runs the CLI's `main(argv)` in the test process (`ivg_main`; a fresh interpreter per case was ~4 s of
imports each, most of this module's time); one case per command also runs as `python -m ivg_jax.cli.main` in a
process of its own, which must print the same line and exit 2."""

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
    (d / "notes.txt").write_text("my notes\nsecond line\n")
    (d / "torn.txt").write_text("precious text without a newline")
    (d / "afile").write_text("x")
    (d / "notjson.jsonl").write_text('{"prompt": "a", "output": "b"}\nnot json\n')
    (d / "numoutput.jsonl").write_text('{"prompt": "a", "output": 3}\n')
    (d / "twice.jsonl").write_text('{"id": "1", "prompt": "a", "output": "b"}\n' * 2)
    (d / "instr.jsonl").write_text('{"prompt": "hello"}\n')
    (d / "noprompt.jsonl").write_text('{"text": "hello"}\n')
    (d / "badline.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    (d / "empty.jsonl").write_text("")
    (d / "nochosen.jsonl").write_text('{"prompt": "a", "rejected": "c"}\n')
    (d / "latin1_pairs.jsonl").write_bytes(b'{"prompt": "a", "chosen": "caf\xe9", "rejected": "c"}\n')
    (d / "blank_chosen.jsonl").write_text('{"prompt": "a", "chosen": "  ", "rejected": "c"}\n')
    (d / "latin1.yaml").write_bytes(b"temperature: 0.5\nbase_template: 'caf\xe9 {prompt}'\n")
    (d / "latin1_prompts").mkdir()
    for split in ("train", "val", "test"):
        (d / "latin1_prompts" / f"{split}.txt").write_bytes(b"The film\nA movie\nCaf\xe9 society\n" * 4)
    (d / "nanreward.jsonl").write_text('{"prompt": "a", "response": "b", "reward": NaN}\n')
    return d


DECODE = ["decode", "--input", "{d}/prompts.jsonl", "--output", "{d}/out.jsonl"]
CASES = {
    "template with another field": (DECODE + ["--base-template", "{foo} {prompt}"], "only {prompt} is filled"),
    "template with a lone brace": (DECODE + ["--base-template", "a { {prompt}"], "literal brace"),
    "template without prompt": (DECODE + ["--guide-template", "hello"], "no '{prompt}' field"),
    "dtype float64": (DECODE + ["--dtype", "float64"], "dtype must be one of"),
    "quantize int4": (DECODE + ["--quantize", "int4"], "quantize must be one of int8 or none"),
    "beams 0": (DECODE + ["--beams", "0"], "beams must be >= 1"),
    "candidates 0": (DECODE + ["--candidates", "0"], "candidates must be >= 1"),
    "chunk length 0": (DECODE + ["--chunk-length", "0"], "chunk_length must be >= 1"),
    "max new tokens 0": (DECODE + ["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    "negative temperature": (DECODE + ["--temperature", "-1"], "temperature"),
    "nan temperature": (DECODE + ["--temperature", "nan"], "temperature"),
    "top-p 0": (DECODE + ["--top-p", "0"], "top_p"),
    "top-p 1.5": (DECODE + ["--top-p", "1.5"], "top_p"),
    "unknown CPU matmul library": (DECODE + ["--cpu-matmuls", "mkl"], "cpu_matmuls must be one of xla, eigen"),
    "retired CPU matmul library": (DECODE + ["--cpu-matmuls", "onednn"],
                                   "'onednn' compiled the same program as 'eigen'"),
    "top-k -1": (DECODE + ["--top-k", "-1"], "top_k"),
    "num shards 0": (DECODE + ["--num-shards", "0"], "num_shards must be >= 1"),
    "input not UTF-8": (["decode", "--input", "{d}/latin1.jsonl", "--output", "{d}/o2.jsonl"],
                        "latin1.jsonl:1: not UTF-8"),
    "input is a directory": (["decode", "--input", "{d}/adir", "--output", "{d}/o3.jsonl"], "adir"),
    "train template field": (["train", "dpo", "--train-data", "{d}/pairs.jsonl", "--output-dir", "{d}/run",
                              "--template", "{x}{prompt}"], "only {prompt} is filled"),
    "train dtype": (["train", "dpo", "--train-data", "{d}/pairs.jsonl", "--output-dir", "{d}/run2",
                     "--dtype", "float64"], "dtype must be"),
    "demo template": (["demo", "--preset", "smoke", "--run-dir", "{d}/demo", "--base-template", "{a}{prompt}"],
                      "only {prompt} is filled"),
    "demo dtype": (["demo", "--preset", "smoke", "--run-dir", "{d}/demo2", "--dtype", "int8"], "dtype must be"),
    # output files: refused before loading, and an existing file that is not a decode output stays as it was
    "output is a directory": (["decode", "--input", "{d}/prompts.jsonl", "--output", "{d}/adir"], "is a directory"),
    "output is someone's notes": (["decode", "--input", "{d}/prompts.jsonl", "--output", "{d}/notes.txt"],
                                  "not a decode output"),
    "output is one torn line": (["decode", "--input", "{d}/prompts.jsonl", "--output", "{d}/torn.txt"],
                                "not a decode result"),
    "output's parent is a file": (["decode", "--input", "{d}/prompts.jsonl", "--output", "{d}/afile/out.jsonl"],
                                  "afile"),
    "train output dir is a file": (["train", "dpo", "--train-data", "{d}/pairs.jsonl", "--output-dir", "{d}/afile"],
                                   "is a file"),
    # ivg eval reads decode results with the project's JSONL reader
    "eval non-JSON line": (["eval", "--input", "{d}/notjson.jsonl", "--reward", "none"], "notjson.jsonl:2"),
    "eval non-string output": (["eval", "--input", "{d}/numoutput.jsonl", "--reward", "none"], "string fields"),
    "eval duplicate ids": (["eval", "--input", "{d}/twice.jsonl", "--reward", "none"], "more than once"),
    "eval not UTF-8": (["eval", "--input", "{d}/latin1.jsonl", "--reward", "none"], "latin1.jsonl:1: not UTF-8"),
    # ivg recipe: sizes and the output location before any model loads
    "recipe batch size 0": (["recipe", "imdb_gpt2", "--prompts", "{d}/instr.jsonl", "--output", "{d}/r.jsonl",
                             "--batch-size", "0"], "batch_size"),
    "recipe limit 0": (["recipe", "imdb_gpt2", "--prompts", "{d}/instr.jsonl", "--output", "{d}/r.jsonl",
                        "--limit", "0"], "limit must be >= 1"),
    "recipe output is a directory": (["recipe", "imdb_gpt2", "--prompts", "{d}/instr.jsonl", "--output", "{d}/adir"],
                                     "is a directory"),
    "recipe output's parent is a file": (["recipe", "imdb_gpt2", "--prompts", "{d}/instr.jsonl", "--output",
                                          "{d}/afile/r.jsonl"], "afile"),
    # more input files: missing, not JSON, wrong schema, empty, wrong types or values
    "decode input missing": (["decode", "--input", "{d}/missing.jsonl", "--output", "{d}/o4.jsonl"], "missing.jsonl"),
    "decode input without prompt": (["decode", "--input", "{d}/noprompt.jsonl", "--output", "{d}/o5.jsonl"],
                                    "noprompt.jsonl"),
    "decode input torn JSON": (["decode", "--input", "{d}/badline.jsonl", "--output", "{d}/o6.jsonl"],
                               "badline.jsonl:2"),
    "decode input empty": (["decode", "--input", "{d}/empty.jsonl", "--output", "{d}/o7.jsonl"], "empty.jsonl"),
    "train data missing": (["train", "dpo", "--train-data", "{d}/missing.jsonl", "--output-dir", "{d}/run3"],
                           "missing.jsonl"),
    "train pair without chosen": (["train", "dpo", "--train-data", "{d}/nochosen.jsonl", "--output-dir", "{d}/run4"],
                                  "'chosen'"),
    "train data not UTF-8": (["train", "dpo", "--train-data", "{d}/latin1_pairs.jsonl", "--output-dir", "{d}/run5"],
                             "latin1_pairs.jsonl:1: not UTF-8"),
    "config file not UTF-8": (DECODE + ["--config", "{d}/latin1.yaml"], "config file {d}/latin1.yaml:2: not UTF-8"),
    "demo prompts not UTF-8": (["demo", "--preset", "smoke", "--run-dir", "{d}/demo6", "--prompts-dir",
                                "{d}/latin1_prompts"], "prompt file {d}/latin1_prompts/train.txt:3: not UTF-8"),
    "train blank response": (["train", "dpo", "--train-data", "{d}/blank_chosen.jsonl", "--output-dir", "{d}/run6"],
                             "empty"),
    "train NaN reward": (["train", "value", "--train-data", "{d}/nanreward.jsonl", "--output-dir", "{d}/run7"],
                         "reward"),
    "train batch size 0": (["train", "dpo", "--train-data", "{d}/pairs.jsonl", "--output-dir", "{d}/run8",
                            "--batch-size", "0"], "batch_size"),
    "train learning rate nan": (["train", "dpo", "--train-data", "{d}/pairs.jsonl", "--output-dir", "{d}/run9",
                                 "--learning-rate", "nan"], "learning_rate"),
    "decode offline hub id": (["decode", "--input", "{d}/prompts.jsonl", "--output", "{d}/o8.jsonl", "--model",
                               "someorg/no-such-model"], "the hub cannot provide it"),
    "demo unknown pair scheme": (["demo", "--preset", "smoke", "--run-dir", "{d}/demo3", "--dpo-pairs", "best"],
                                 "dpo_pairs must be one of"),
    "demo budget beyond the context": (["demo", "--preset", "smoke", "--run-dir", "{d}/demo5", "--max-new-tokens",
                                        "9000"], "exceed the context"),
    "demo one sample per prompt": (["demo", "--preset", "smoke", "--run-dir", "{d}/demo4",
                                    "--samples-per-prompt", "1"], "samples_per_prompt must be >= 2"),
}
ENV_FLAGS = {"decode": ENV_ARGS, "train": ENV_ARGS, "eval": ENV_ARGS,
             "recipe": ["--base", "/nonexistent/model", "--tuned", "/nonexistent/t", "--reference",
                        "/nonexistent/r", "--value", "/nonexistent/v"]}


def _args(case: str, files) -> list[str]:
    args = [a.format(d=files) if a.startswith("{d}") else a for a in CASES[case][0]]
    return args + ([] if "--model" in args else ENV_FLAGS.get(args[0], []))


def _expected(case: str, files) -> str:
    return CASES[case][1].replace("{d}", str(files))


def _error_line(code: int, stderr: str, expected: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip() and not x.startswith(("WARNING", "W0000", "I0000"))]
    assert code == 2, (code, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert expected in lines[0], lines[0]
    assert "nonexistent" not in lines[0], "checked only after reaching the loader"
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_before_loading(case, files, ivg_main):
    before = {p: p.read_bytes() for p in files.iterdir() if p.is_file()}
    entries = sorted(files.iterdir())
    _error_line(*ivg_main(*_args(case, files), cwd=files), _expected(case, files))
    assert {p: p.read_bytes() for p in files.iterdir() if p.is_file()} == before, "a file was changed or left"
    assert sorted(files.iterdir()) == entries, "a refused job created a file or run directory"


@pytest.mark.parametrize("case", ["dtype float64", "train pair without chosen", "demo dtype", "eval duplicate ids",
                                  "recipe limit 0"])
def test_a_process_prints_the_same_line_and_exits_2(case, files, ivg_main):
    r = _ivg(*_args(case, files), cwd=files)
    line = _error_line(r.returncode, r.stderr, _expected(case, files))
    assert _error_line(*ivg_main(*_args(case, files), cwd=files), _expected(case, files)) == line
