"""The train step on meshes: 8 host CPU devices (2x4 tensor parallel, 4x2 data parallel + FSDP) and a
2-process jax.distributed job give the parameters and validation metrics of one device, within float tolerance."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

JOB = os.path.join(os.path.dirname(__file__), "train_sharded_job.py")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _report(stdout: str) -> dict:
    return json.loads(next(x for x in stdout.splitlines() if x.startswith("REPORT "))[7:])


def _same(a: dict, b: dict) -> None:
    np.testing.assert_allclose(a["params"], b["params"], atol=2e-5, rtol=1e-4)
    for k, v in b["val"].items():
        np.testing.assert_allclose(a["val"][k], v, atol=1e-5, rtol=1e-4, err_msg=k)


@pytest.fixture(scope="module")
def local_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_sharded")
    proc = subprocess.run([sys.executable, JOB, "local", str(out)], capture_output=True, text=True, env=ENV,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _report(proc.stdout)


def test_a_diverged_run_restores_its_first_step_on_the_mesh(local_report):
    """Best-step restore (parameters only) onto FSDP-sharded weights gives back the untouched model exactly."""
    diverging = local_report["diverging"]
    assert diverging["best"] == 0
    np.testing.assert_array_equal(diverging["params"], local_report["initial"])
    assert any("data" in s for s in diverging["shardings"])


@pytest.mark.parametrize("objective", ["dpo", "fudge"])
def test_meshes_on_8_devices_match_one_device(local_report, objective):
    runs = local_report["runs"]
    one = runs[f"{objective}/1"]
    for mesh in ("2x4", "4x2-fsdp"):
        _same(runs[f"{objective}/{mesh}"], one)
    # The weights really were split: tensor parallel over "model", FSDP also over "data".
    assert any("model" in s for s in runs[f"{objective}/2x4"]["shardings"])
    assert any("data" in s for s in runs[f"{objective}/4x2-fsdp"]["shardings"])


def test_two_process_distributed_matches_one_device(local_report, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    # Output goes to files, not pipes: a full pipe would stall one process while the other waits at a barrier.
    logs = [(open(tmp_path / f"out{i}", "w+"), open(tmp_path / f"err{i}", "w+")) for i in range(2)]
    procs = [subprocess.Popen([sys.executable, JOB, "dist", str(tmp_path), str(i), "2", port], stdout=out,
                              stderr=err, text=True, env=ENV) for i, (out, err) in enumerate(logs)]
    for p in procs:
        p.wait(timeout=900)
    outs = [(open(out.name).read(), open(err.name).read()) for out, err in logs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    reports = [_report(out) for out, _ in outs]
    assert sorted(r["process"] for r in reports) == [0, 1] and all(r["devices"] == 4 for r in reports)
    for r in reports:
        for objective in ("dpo", "fudge"):
            _same(r["runs"][f"{objective}/4x2-fsdp"], local_report["runs"][f"{objective}/1"])
        # across two processes too, the diverged run's best step (the start) is read back exactly
        assert r["diverging"]["best"] == 0
        np.testing.assert_array_equal(r["diverging"]["params"], local_report["initial"])
