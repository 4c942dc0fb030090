#!/usr/bin/env bash
# The checks that need a GPU, as one script: CUDA tests (same numbers as CPU, AMP fp16/bf16,
# CUDA-graph capture of the default loss), the loss speed table (kernel counts; torch.compile
# with CUDA graphs as a contender) and the embedding-step
# benchmark (eager and compiled, kernel counts) on the GPU. Usage: bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"; } 2>&1 | tee "$out/env.txt"
python3 -m pytest -q -p no:cacheprovider -o addopts="" -W "ignore::DeprecationWarning" tests 2>&1 | tee "$out/pytest.txt"
COLUMNS=250 python3 benchmarks/loss_speed.py --device cuda --repeats 15 --compile 2>&1 | tee "$out/loss_speed_cuda.txt"
COLUMNS=200 python3 benchmarks/embedding_step.py --device cuda --compile 2>&1 | tee "$out/embedding_step_cuda.txt"
# (backend crossover on CUDA measured 2026-11-26: fused 0.81-0.90x of autograd; see benchmarks/README.md)
