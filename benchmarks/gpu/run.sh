#!/usr/bin/env bash
# The prepared GPU benchmark (one H100/H200, JAX preinstalled, no network): the full-size engine grid
# (16 prompts, W=K=4, L=5, 50 new tokens) and the scaling sweep, on SmolLM2-135M-shaped random weights
# and then issue 14's measures at GPT-2-small shapes (ivg_peak.py: s/prompt, step FLOPs, % of matmul peak)
# (the 98 MB GGUF is over the device tool's transfer limit; cost does not depend on weight values).
# Run from the repo root through the device tool:  bash benchmarks/gpu/run.sh   (results land in $OUT)
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT="${OUT:-benchmarks/results}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
timeout 280 python3 benchmarks/engine_overhead.py --model random --dtype bfloat16 --prompts 16 --beams 4 \
  --candidates 4 --chunk 5 --new-tokens 50 --repeats 3 --scaling --out "$OUT" 2>&1 | tee "$OUT/engine_gpu.log" \
  || echo "engine_overhead.py failed or timed out; going on to ivg_peak.py"
timeout 240 python3 benchmarks/ivg_peak.py --dtypes bfloat16 float32 --prompts 1 8 --repeats 3 \
  --out "$OUT/ivg_peak_gpu.md" 2>&1 | tee "$OUT/ivg_peak_gpu.log"
