"""Run by tests/test_training_sharded.py: the same DPO and FUDGE jobs on one device, on 8-device meshes
(data parallel, tensor parallel, FSDP), or as one process of a 2-process jax.distributed job."""
import json
import os
import sys

import jax

mode, out_dir = sys.argv[1], sys.argv[2]
if mode == "local":
    jax.config.update("jax_num_cpu_devices", 8)
else:  # distributed: argv = dist, out_dir, process_id, n_processes, port
    pid, nproc, port = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from synthetic import preference_records, scored_records, tiny_model, write_jsonl  # noqa: E402

from ivg_jax.sharding import to_host  # noqa: E402
from ivg_jax.training import TrainConfig, train  # noqa: E402

os.makedirs(out_dir, exist_ok=True)


def shared_file(name, records):
    """Every process writes the same content; the atomic rename makes the race harmless and the path one."""
    tmp = write_jsonl(f"{out_dir}/{name}.{jax.process_index()}.tmp", records)
    os.replace(tmp, f"{out_dir}/{name}")
    return f"{out_dir}/{name}"


data = {"dpo": shared_file("pref.jsonl", preference_records(48, 0)),
        "fudge": shared_file("scored.jsonl", scored_records(48, 0))}
MESHES = {"1": (1, 1, False), "2x4": (2, 4, False), "4x2-fsdp": (4, 2, True)}
runs = MESHES if mode == "local" else {"4x2-fsdp": MESHES["4x2-fsdp"]}


def run(objective, name, mesh, learning_rate=1e-2):
    d, m, fsdp = mesh
    cfg = TrainConfig(objective=objective, train_data=data[objective], val_data=data[objective],
                      output_dir=f"{out_dir}/{mode}-{objective}-{name}", batch_size=8, steps=3,
                      learning_rate=learning_rate,
                      warmup_ratio=0.0, eval_every=3, save_every=3, max_length=16, mesh_data=d, mesh_model=m,
                      fsdp=fsdp, export=False, train_top_blocks=1 if objective == "fudge" else None)
    result = train(cfg, model=tiny_model(seed=0), progress=False)
    flat = np.concatenate([to_host(x).ravel() for x in jax.tree.leaves(result.model.params)])
    shardings = sorted({str(getattr(x.sharding, "spec", None)) for x in jax.tree.leaves(result.model.params)})
    return {"params": flat.tolist(), "val": result.best_metrics, "shardings": shardings, "best": result.best_step}


report = {"process": jax.process_index(), "devices": jax.local_device_count(),
          "runs": {f"{obj}/{name}": run(obj, name, mesh) for obj in ("dpo", "fudge") for name, mesh in runs.items()}}
# A run that only gets worse: its best step is the start, restored from the checkpoint on the FSDP mesh (only the
# parameters are read back, not the optimiser state); the untouched model is the oracle.
report["diverging"] = run("dpo", "4x2-fsdp-diverging", MESHES["4x2-fsdp"], learning_rate=50.0)
report["initial"] = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tiny_model(seed=0).params)]
                                   ).tolist()
print("REPORT " + json.dumps(report))
