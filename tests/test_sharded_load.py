"""Weights streamed straight into a device mesh (8 host CPU devices, in a subprocess) give unsharded logits."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    import ivg_jax
    from ivg_jax.sharding import make_mesh
    from oracle import pad_batch, random_rows

    directory = sys.argv[1]
    rows = random_rows([9, 4, 12, 7, 1, 3, 8, 10], seed=7)
    ids, mask = pad_batch(rows, "left")
    reference = np.asarray(ivg_jax.forward(ivg_jax.load_model(directory), ids, mask))
    report = {"devices": jax.device_count()}
    for data, model in [(8, 1), (4, 2), (2, 4), (1, 8)]:
        mesh = make_mesh(data, model)
        m = ivg_jax.load_model(directory, mesh=mesh)
        out = np.asarray(ivg_jax.forward(m, ids, mask))
        q = m.params["blocks"]["attn"]["q"]
        report[f"{data}x{model}"] = {
            "max_err": float(np.abs(out - reference)[mask].max()),
            "q_spec": [str(a) for a in q.sharding.spec],
            "q_devices": len(q.sharding.device_set),
            "embed_spec": [str(a) for a in m.params["embed"].sharding.spec],
        }
    from ivg_jax.sharding import shard_params
    mesh = make_mesh(2, 4)  # blocks held per layer: each layer's arrays placed with the stack's spec less its axis
    for name, m in (("per_layer", ivg_jax.load_model(directory, mesh=mesh, per_layer=True)),
                    ("per_layer_placed", shard_params(ivg_jax.load_model(directory, per_layer=True), mesh))):
        out = np.asarray(ivg_jax.forward(m, ids, mask))
        q = m.params["blocks"][0]["attn"]["q"]
        report[name] = {"max_err": float(np.abs(out - reference)[mask].max()),
                        "q_spec": [str(a) for a in q.sharding.spec], "q_devices": len(q.sharding.device_set)}
    # int8 weights (values and scales) placed on the weights' shardings, while loading or afterwards
    int8_reference = np.asarray(ivg_jax.forward(ivg_jax.load_model(directory, quantize="int8"), ids, mask))
    for name, m in (("int8", ivg_jax.load_model(directory, mesh=mesh, quantize="int8")),
                    ("int8_per_layer", ivg_jax.load_model(directory, mesh=mesh, per_layer=True, quantize="int8")),
                    ("int8_placed", shard_params(ivg_jax.load_model(directory, quantize="int8"), mesh))):
        out = np.asarray(ivg_jax.forward(m, ids, mask))
        blocks = m.params["blocks"]
        q = (blocks[0] if isinstance(blocks, tuple) else blocks)["attn"]["q"]
        report[name] = {"max_err": float(np.abs(out - int8_reference)[mask].max()),
                        "q_spec": [str(a) for a in q.values.sharding.spec],
                        "scale_spec": [str(a) for a in q.scale.sharding.spec],
                        "q_devices": len(q.values.sharding.device_set)}
    print("REPORT " + json.dumps(report))
""")


@pytest.mark.parametrize("name", ["llama-gqa-tied", "mixtral-4experts"])
def test_sharded_load_equals_unsharded(hf_checkpoint, name):
    directory, _ = hf_checkpoint(name)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(directory)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))[7:])
    assert report["devices"] == 8
    for mesh in ["8x1", "4x2", "2x4", "1x8"]:
        assert report[mesh]["max_err"] < 1e-5, (mesh, report[mesh])
        assert report[mesh]["q_devices"] == 8
    # 4 query heads split over a model axis of 2 or 4; 8 does not divide 4 heads, so that axis is dropped.
    assert report["2x4"]["q_spec"] == ["None", "None", "model", "None"]
    assert report["4x2"]["q_spec"] == ["None", "None", "model", "None"]
    assert report["1x8"]["q_spec"] == ["None", "None", "None", "None"]
    for name in ("per_layer", "per_layer_placed"):
        assert report[name]["max_err"] < 1e-5 and report[name]["q_devices"] == 8, (name, report[name])
        assert report[name]["q_spec"] == ["None", "model", "None"], (name, report[name])
    for name, spec in (("int8", ["None", "None", "model", "None"]), ("int8_per_layer", ["None", "model", "None"]),
                       ("int8_placed", ["None", "None", "model", "None"])):
        assert report[name]["max_err"] < 1e-5 and report[name]["q_devices"] == 8, (name, report[name])
        assert report[name]["q_spec"] == report[name]["scale_spec"] == spec, (name, report[name])
    # vocab 97 is prime: the embedding stays replicated rather than failing to load
    assert report["2x4"]["embed_spec"] == ["None", "None"]
