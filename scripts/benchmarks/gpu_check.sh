#!/usr/bin/env bash
# The prepared GPU check, at most about 10 minutes: random-LTD efficiency in bf16 with sdpa and (when flash-attn is
# installed) flash-attention varlen, compiled and eager, packed and padded, on GPT-2 12x768 at sequence 1024 (PTB and
# BBC News lengths from scripts/benchmarks/document_lengths.json, so no offline data package is needed), then a
# 2-process run when more than one GPU is visible. Tables and JSON go to ${OUT:-outputs/gpu_check}.
#
#   bash scripts/benchmarks/gpu_check.sh              # on a GPU machine
#   bash scripts/benchmarks/gpu_check.sh --dry-run    # on CPU with a tiny model: the same code paths, in seconds
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ "${1:-}" = "--dry-run" ]; then
  python scripts/benchmarks/bench_packed.py --lengths saved --data ptb bbc --layers 3 --d-model 64 --vocab 256 \
    --max-len 256 --docs-per-step 16 2 --steps 1 --repeats 1 --compile aot_eager --json "$OUT/dry_run.json"
  python -m torch.distributed.run --standalone --nproc_per_node 2 scripts/benchmarks/ddp_check.py --cpu --layers 3 --d-model 64 \
    --vocab 256 --max-len 256 --docs-per-step 2 --steps 2 | tee "$OUT/two_process.md"
  exit 0
fi
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
attn="sdpa"
if python -c "import flash_attn" 2>/dev/null; then attn="sdpa flash_attention_2"; fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# shellcheck disable=SC2086  # $attn holds one or two implementations
timeout 480 python scripts/benchmarks/bench_packed.py --lengths saved --device cuda --dtype bfloat16 --wall \
  --layers 12 --d-model 768 --vocab 50257 --max-len 1024 --docs-per-step 256 8 --steps 3 --repeats 5 \
  --attn $attn --json "$OUT/bench_packed.json" 2>&1 | tee "$OUT/bench_packed.md"
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -gt 1 ]; then
  timeout 120 torchrun --standalone --nproc_per_node 2 scripts/benchmarks/ddp_check.py 2>&1 | tee "$OUT/two_process.md"
fi
