#!/usr/bin/env bash
# The GPU part of the throughput benchmark (issue 7), sized for about 5 minutes on one H100/H200:
#   bash benchmarks/gpu.sh            (from the repository root, after `make test` built .venv)
# 1. bf16, 8 episodes per step, every setting, the DataLoader given one worker per core;
# 2. the same with torch.compile for Conv-4 and ResNet-12 at 84 px 1-shot;
# 3. fp32 for the same two settings, for the precision gain.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
common=(--device cuda --episodes-per-step 8 --warmup 10 --conventional-episodes 200)
"$PY" benchmarks/throughput.py "${common[@]}" --episodes 2400 --resnet-episodes 800 --precision bf16 \
    --out "$OUT/throughput_gpu_bf16.json"
"$PY" benchmarks/throughput.py "${common[@]}" --episodes 1600 --resnet-episodes 400 --precision bf16 --compile \
    --only conv4-84-1 resnet12-84-1 --no-distill --out "$OUT/throughput_gpu_bf16_compiled.json"
"$PY" benchmarks/throughput.py "${common[@]}" --episodes 1600 --resnet-episodes 400 --precision fp32 \
    --only conv4-84-1 resnet12-84-1 --no-distill --out "$OUT/throughput_gpu_fp32.json"
