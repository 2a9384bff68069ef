import atexit
import os
import shutil
import signal
import sys
import tempfile

# Tests run on the CPU in float32 whatever machine they are on; matmul precision must be full for 1e-4 parity.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Per-session caches, inherited by the subprocesses the tests start (CLI calls, notebooks, multi-process jobs):
# XLA's compilation cache (the same tiny programs are compiled in dozens of fresh processes, and compiling is most
# of their time on a 2-core CI machine) and ivg-jax's own (the GGUF's converted tokenizer). Fresh per session, so
# no run depends on another's leftovers: every program and conversion still happens once within the run.
# Fetched assets (`ivg assets fetch`) stay in the user's cache, read from before the per-session one replaces it.
os.environ.setdefault("IVG_JAX_TEST_ASSETS", os.path.join(
    os.environ.get("IVG_JAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ivg-jax"), "assets"))
_session_cache = tempfile.mkdtemp(prefix="ivg-jax-tests-cache-")
atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_session_cache, "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("IVG_JAX_CACHE_DIR", os.path.join(_session_cache, "ivg-jax"))
sys.path.insert(0, os.path.dirname(__file__))

from ivg_jax.runtime import with_xla_flags  # noqa: E402  (after the JAX variables above: importing reads them)

# The suite's programs are tiny and each is compiled once, so LLVM's optimisation of XLA:CPU's generated code is most
# of a test's time and buys nothing: at level 0 the suite takes ~0.7x the time (matmuls still go to the precompiled
# library kernels; the same HLO runs, its loops less optimised, so results move only by float rounding, well inside
# the parity tests' tolerances). XLA:CPU's newer MLIR fusion emitters take longer to compile than its elemental
# emitter for the same fusions: turning them off cut a tiny-model pipeline test 35 -> 25 s (same HLO; results again
# within float rounding). Users' jobs keep XLA's default: there the compiled program runs for minutes.
SUITE_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = with_xla_flags(os.environ.get("XLA_FLAGS", ""), SUITE_XLA_FLAGS)


def users_xla_flags() -> str:
    """XLA_FLAGS without the suite's compile-time settings: for processes that run a compiled 135M model long
    enough to lose more in run time than they gain in compiling (the notebooks: 11-23% faster with these)."""
    return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f not in SUITE_XLA_FLAGS)

import pytest  # noqa: E402
from oracle import FAMILIES, make_hf_model  # noqa: E402


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """name -> (directory, torch model), saved once per session."""
    made = {}

    def get(name):
        if name not in made:
            d = tmp_path_factory.mktemp(name)
            made[name] = (d, make_hf_model(name, d))
        return made[name]

    return get


ALL_FAMILIES = list(FAMILIES)


@pytest.fixture
def ivg_main(monkeypatch, capfd):
    """run(*args, cwd=None) -> (exit code, stderr) of the CLI's `main(argv)` in the test process: what a fresh
    `ivg` process does after its ~4 s of imports. main() is a process's entry point — it adds CPU flags to
    XLA_FLAGS, puts decode/ on sys.path (recipe) and takes SIGTERM — so all three are given back."""
    from ivg_jax.cli.main import main

    def run(*args, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
        monkeypatch.setattr(sys, "path", list(sys.path))
        sigterm = signal.getsignal(signal.SIGTERM)
        capfd.readouterr()
        try:
            code = main([str(a) for a in args])
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        return code, capfd.readouterr().err

    return run
