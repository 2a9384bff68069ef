"""Every fenced code block of README.md and docs/*.md runs as written, offline, so examples cannot drift.

Blocks run in document order (README first, then docs/ by name) in one shared working directory, as a reader
following the pages would: a later block may use what an earlier one wrote (runs/dpo/export, ...). The data
the examples train on is the main job's (`runs/sentiment-fast/data/`), made here by its first two stages.

A block may be preceded by HTML comments (invisible on the rendered page) that say how the test runs it:
    <!-- doctest: skip: REASON -->            not run here (a TPU pod command); the reason is reported
    <!-- doctest: smoke: "old" -> "new" -->   a text substitution that shrinks a long example (several
                                              `"a" -> "b"` pairs may be separated by `;`)
    <!-- doctest: env: NAME=VALUE -->         an environment variable for this block
python blocks run with `python -c`, bash blocks with `bash -euo pipefail -c`, toml blocks are parsed and
checked against the config class they configure. Each must exit 0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ivg_jax.runtime import with_xla_flags

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?P<directives>(?:<!-- doctest: .*? -->\n)*)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^```",
                   re.S | re.M)
DIRECTIVE = re.compile(r"<!-- doctest: (\w+): (.*?) -->")
PAIR = re.compile(r'"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)"')
# The README's own setup commands are what .ci/run runs (command 1 in a fresh venv, command 2 is this suite).
SETUP_BLOCK_MARK = "pip install -e ."


def examples() -> list:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            line = text[:m.start("lang")].count("\n") + 1
            directives: dict = {"smoke": [], "env": {}}
            for kind, value in DIRECTIVE.findall(m.group("directives")):
                if kind == "skip":
                    directives["skip"] = value
                elif kind == "smoke":
                    directives["smoke"] += [(a.replace('\\"', '"'), b.replace('\\"', '"'))
                                            for a, b in PAIR.findall(value)]
                elif kind == "env":
                    name, _, val = value.partition("=")
                    directives["env"][name] = val
                else:
                    raise AssertionError(f"{page.name}:{line}: unknown doctest directive {kind!r}")
            found.append(pytest.param(m.group("lang"), m.group("body"), directives,
                                      id=f"{page.relative_to(ROOT)}:{line}"))
    return found


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A source checkout's scripts and what the README's main job leaves for the examples (its sampled, labelled
    data). Removed after the module: the examples' checkpoints and exports come to ~5 GB."""
    work = tmp_path_factory.mktemp("docs")
    for script_dir in ("train", "decode", "benchmarks"):  # a reader runs the pages from a source checkout
        (work / script_dir).symlink_to(ROOT / script_dir)
    proc = subprocess.run([sys.executable, str(ROOT / "decode" / "sentiment.py"), "--preset", "smoke",
                           "--stages", "sample,label", "--run-dir", "runs/sentiment-fast", "--quiet"],
                          cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    yield work
    shutil.rmtree(work, ignore_errors=True)


def _shrink(body: str, pairs: list, where: str) -> str:
    for old, new in pairs:
        assert old in body, f"{where}: smoke substitution {old!r} does not occur in the block (stale directive)"
        body = body.replace(old, new)
    return body


def _check_toml(body: str) -> None:
    """The docs' example config is a decode job config: every key a field, every value accepted."""
    import dataclasses

    from ivg_jax.decoding.jobs import DecodeJobConfig

    data = tomllib.loads(body)
    fields = {f.name for f in dataclasses.fields(DecodeJobConfig)}
    assert set(data) <= fields, f"unknown keys {set(data) - fields}"
    DecodeJobConfig(input="in.jsonl", output="out.jsonl", **data)


@pytest.mark.parametrize("lang,body,directives", examples())
def test_example_runs(lang, body, directives, workspace, request):
    where = request.node.callspec.id
    if "skip" in directives:
        pytest.skip(f"{where}: {directives['skip']}")
    if SETUP_BLOCK_MARK in body:
        pytest.skip(f"{where}: the README's setup commands; .ci/run runs both (command 1 in a fresh venv)")
    body = _shrink(body, directives["smoke"], where)
    if lang == "toml":
        _check_toml(body)
        return
    if lang == "python":
        command = [sys.executable, "-c", body]
    elif lang == "bash":
        command = ["bash", "-euo", "pipefail", "-c", body]
    else:
        raise AssertionError(f"{where}: a ```{lang} block; mark it with a doctest directive or give it a language")
    env = {**os.environ, **directives["env"], "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if "XLA_FLAGS" in directives["env"]:  # the block's flags join the suite's (conftest), not replace them
        env["XLA_FLAGS"] = with_xla_flags(os.environ.get("XLA_FLAGS", ""), directives["env"]["XLA_FLAGS"].split())
    proc = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{where} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
