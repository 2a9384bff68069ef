"""Process-level XLA flags (ivg_jax.runtime): they are appended once, never override the user's, and the collective
flag is the one XLA:CPU reads (a device that reaches a collective late aborts the process without it)."""

import os
import subprocess
import sys

import pytest

from ivg_jax import runtime

LATE_DEVICE = """
import time, jax, jax.numpy as jnp, numpy as np
jax.config.update('jax_num_cpu_devices', 2)
from jax.sharding import NamedSharding, PartitionSpec as P
from jax.experimental import io_callback
mesh = jax.make_mesh((2,), ('x',))
def late_on_device_0(i):
    if int(i) == 0:
        time.sleep(4)
    return np.int32(i)
def f(x):
    i = io_callback(late_on_device_0, jax.ShapeDtypeStruct((), jnp.int32), jax.lax.axis_index('x'))
    return jax.lax.psum(x + i.astype(x.dtype), 'x')
x = jax.device_put(jnp.arange(2.0), NamedSharding(mesh, P('x')))
print(float(jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P('x'), out_specs=P()))(x)[0]))
"""


def test_flags_are_added_once_and_never_override_the_users(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_xnnpack=false")
    runtime.tune_cpu()
    runtime.tune_cpu()
    flags = os.environ["XLA_FLAGS"].split()
    assert flags == ["--xla_cpu_use_xnnpack=false", *runtime.COLLECTIVE_FLAGS]
    monkeypatch.delenv("XLA_FLAGS")
    runtime.patient_cpu_collectives()
    assert os.environ["XLA_FLAGS"].split() == list(runtime.COLLECTIVE_FLAGS)


@pytest.mark.parametrize("patient", [False, True])
def test_a_device_late_to_a_collective_aborts_the_process_unless_patient(patient, tmp_path):
    # XLA's clock shortened to a 1 s warning + 2 s termination, so a device 4 s late trips it; the patient run
    # differs only by runtime.COLLECTIVE_FLAGS, which must therefore be the flag XLA:CPU honours.
    flags = "--xla_cpu_collective_call_warn_stuck_timeout_seconds=1 "
    flags += " ".join(runtime.COLLECTIVE_FLAGS) if patient else "--xla_cpu_collective_call_terminate_timeout_seconds=2"
    proc = subprocess.run([sys.executable, "-c", LATE_DEVICE], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags})
    if patient:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert float(proc.stdout.split()[-1]) == 2.0  # psum over devices of x_i + i = (0 + 0) + (1 + 1)
    else:
        assert proc.returncode == -6, (proc.returncode, proc.stderr[-2000:])  # SIGABRT
        assert "Termination timeout" in proc.stderr
