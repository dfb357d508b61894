#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (see CONTRIBUTING.md): run from the repository root with the
# PML wheel in .whl/ (the machine has torch/torchvision/timm but no PML, and no network). Writes under $OUT.
#   loss: fp16/bf16 autocast checks and device-vs-float64 agreement; loss_speed at B = 4000 and 10000 (+ SiMix)
#   trainer: ResNet-50 at B = 4000, chunk 200, fp32 and bf16, peak memory and images/s; gradient equality on CUDA
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/nvidia_smi.txt"
timeout 60 python3 benchmarks/gpu_loss_check.py --device cuda
timeout 240 python3 benchmarks/gpu_trainer_check.py 2>&1 | tail -60
timeout 220 python3 benchmarks/loss_speed.py --device cuda --sizes 4000 10000 --simix-sizes 4000 --repeats 5 \
    --timeout 60 --out "$OUT/loss_speed_cuda" 2>&1 | tail -30
