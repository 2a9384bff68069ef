"""Run by tests/test_engine_sharded.py: decode with several meshes (or as one process of a jax.distributed job)."""
import json
import sys

import jax

mode = sys.argv[1]
if mode == "local":
    jax.config.update("jax_num_cpu_devices", 8)
else:  # distributed: argv = dist, process_id, n_processes, port
    pid, nproc, port = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)


import ivg_jax  # noqa: E402
from ivg_jax.config import ModelConfig  # noqa: E402
from ivg_jax.sharding import make_mesh  # noqa: E402

CFG = ModelConfig(family="llama", vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ff=48, pad_token_id=0, eos_token_ids=(1,))


def scaled(m):
    p = dict(m.params)
    p["embed"] = p["embed"] * 30.0
    return m.with_params(p)


base = scaled(ivg_jax.init_model(CFG, 0))
guidance = ivg_jax.Guidance(
    implicit=[ivg_jax.ImplicitGuide(scaled(ivg_jax.init_model(CFG, 1)), scaled(ivg_jax.init_model(CFG, 2)), 1.0)],
    explicit=ivg_jax.ExplicitGuide(scaled(ivg_jax.init_model(CFG.replace(head="value"), 3)), 1.0),
    token="implicit", chunk="explicit")
prompts = [[5 + i, 6, 7 + 2 * i][: 1 + i % 3] for i in range(8)]
kw = dict(search=ivg_jax.Search(2, 2, 3), sampling=ivg_jax.Sampling(1.0), max_new_tokens=9, seed=7, stop_ids=[1])


def summary(out):
    return {"tokens": out.tokens.tolist(), "scores": out.scores.tolist(), "kl": out.kl.sum(1).tolist()}


report = {}
if mode == "local":
    report["1"] = summary(ivg_jax.generate(base, prompts, guidance, **kw))
    for data, model in [(8, 1), (4, 2), (2, 4)]:
        mesh = make_mesh(data, model)
        report[f"{data}x{model}"] = summary(ivg_jax.generate(base, prompts, guidance, mesh=mesh, **kw))
else:
    mesh = make_mesh(2, 2)  # spans both processes' devices
    report["dist"] = summary(ivg_jax.generate(base, prompts, guidance, mesh=mesh, **kw))
    report["process"] = jax.process_index()
    report["devices"] = jax.device_count()
print("REPORT " + json.dumps(report))
