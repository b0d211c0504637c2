#!/usr/bin/env bash
# The one-GPU step measurement in one go (benchmarks/gpu_step.py; under 8 minutes on an H100/H200-class GPU).
#
#   benchmarks/gpu_step.sh OUT_DIR [PEAK_TFLOPS]      # PEAK_TFLOPS: dense bf16 peak, 989 for H100/H200 SXM
#
# A machine with only PyTorch (and timm) needs the project's pure dependencies; without network, bring them as
# wheels in ./wheels, made beforehand on a machine with network:
#   pip download --no-deps -d wheels deepspeed==0.19.7 pydantic==2.14.4 pydantic-core annotated-types \
#       typing-inspection hjson msgpack ninja py-cpuinfo einops psutil tqdm
# Without DeepSpeed the ZeRO rows are skipped with a message; the rest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu_step.sh OUT_DIR [PEAK_TFLOPS]}
peak=${2:-989}
mkdir -p "$out"
if [ -d wheels ]; then
  python -m pip install -q --no-index --no-deps wheels/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$out/gpu.csv" || true
PYTHONPATH=$PWD timeout 470 python -u benchmarks/gpu_step.py --peak-tflops "$peak" --budget-s 400 \
  --json "$out/gpu_step.json" 2>&1 | grep -v -E "Warning|warn\(" | tee "$out/gpu_step.txt"
