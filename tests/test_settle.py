"""`sharding.settle`: on a mesh of XLA:CPU devices a sharded program's outputs are complete when it returns. The
engine and the trainer call it after each sharded dispatch: XLA:CPU (jax 0.10) can deadlock when one host device
queues several sharded executions ahead of its peers (a 2-device psum loop dispatched 100 times on a loaded 2-core
host hung in 6 of 8 runs, in 0 of 8 when each call was waited for)."""

import os
import subprocess
import sys

SETTLE = """
import jax, jax.numpy as jnp
jax.config.update('jax_num_cpu_devices', 2)
from jax.sharding import NamedSharding, PartitionSpec as P
from ivg_jax.sharding import settle
mesh = jax.make_mesh((2,), ('x',))
x = jax.device_put(jnp.ones((2, 512, 512)), NamedSharding(mesh, P('x')))
step = lambda i, b: jnp.tanh(b @ b + jax.lax.psum(b, 'x'))
loop = jax.jit(jax.shard_map(lambda a: jax.lax.fori_loop(0, 100, step, a), mesh=mesh, in_specs=P('x'),
                             out_specs=P('x')))
jax.block_until_ready(loop(x))  # compiled
pending = loop(x)  # multi-device programs dispatch asynchronously: ~1 s of matmuls still to run
assert not all(s.data.is_ready() for s in pending.addressable_shards)
outs = [settle(loop(x), mesh) for _ in range(3)]
assert all(s.data.is_ready() for o in outs for s in o.addressable_shards)
unsharded = loop(x)
assert settle(unsharded, None) is unsharded
print("settled")
"""


def test_settle_waits_for_every_device_of_a_cpu_mesh(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SETTLE], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "settled"
