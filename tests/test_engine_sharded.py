"""The engine on meshes: 8 host CPU devices (8x1, 4x2, 2x4) and a 2-process jax.distributed job on localhost give
the tokens and scores of one device. Each runs `engine_sharded_job.py` in fresh processes (device count and
distributed setup must precede JAX's backend)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

JOB = os.path.join(os.path.dirname(__file__), "engine_sharded_job.py")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _report(stdout: str) -> dict:
    return json.loads(next(x for x in stdout.splitlines() if x.startswith("REPORT "))[7:])


def _same(a: dict, b: dict) -> None:
    assert a["tokens"] == b["tokens"]
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    np.testing.assert_allclose(a["kl"], b["kl"], atol=1e-5)


@pytest.fixture(scope="module")
def local_report():
    proc = subprocess.run([sys.executable, JOB, "local"], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _report(proc.stdout)


def test_meshes_on_8_devices_match_one_device(local_report):
    for mesh in ("8x1", "4x2", "2x4"):
        _same(local_report[mesh], local_report["1"])


def test_two_process_distributed_matches_one_device(local_report):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, JOB, "dist", str(i), "2", port], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    reports = [_report(out) for out, _ in outs]
    assert sorted(r["process"] for r in reports) == [0, 1] and all(r["devices"] == 4 for r in reports)
    for r in reports:
        _same(r["dist"], local_report["1"])
