#!/usr/bin/env bash
# Plain decode throughput on the GPU: ivg-jax (jitted prefill + lax.scan) vs transformers `generate` on CUDA,
# both on the same random SmolLM2-135M-shaped bf16 checkpoint written there by transformers (the 98 MB GGUF is
# over the device tool's transfer limit). Needs .gpu_assets/smollm2 (config + tokenizer, 3.4 MB), made here by:
#   python -c "from transformers import AutoConfig as C, AutoTokenizer as T; from ivg_jax.defaults import \
#   default_model_path as d; p=d(); [x.from_pretrained(str(p.parent), gguf_file=p.name).save_pretrained( \
#   '.gpu_assets/smollm2') for x in (C, T)]"
# Run through the device tool with carry [".gpu_assets"]:  bash benchmarks/gpu/decode_vs_hf.sh
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT="${OUT:-benchmarks/results}"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
cp -r .gpu_assets/smollm2 /tmp/smollm2-random
timeout 330 python3 benchmarks/decode_throughput.py --model /tmp/smollm2-random --randomize --dtype bfloat16 \
  --batches 1 16 64 256 --new-tokens 64 --repeats 3 --out "$OUT/decode_throughput_gpu.md" 2>&1 \
  | tee "$OUT/decode_gpu.log"
# int8 weight-only (issue 14): unmeasured on GPU so far; XLA:GPU can fuse the int8 -> bf16 convert into its
# matmul fusions, which XLA:CPU does not (there int8 is slower than float: decode_throughput_int8_cpu.md)
timeout 200 python3 benchmarks/decode_throughput.py --model /tmp/smollm2-random --dtype bfloat16 --quantize int8 \
  --batches 1 16 64 --new-tokens 64 --repeats 3 --out "$OUT/decode_throughput_int8_gpu.md" 2>&1 \
  | tee -a "$OUT/decode_gpu.log"
