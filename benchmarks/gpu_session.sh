#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (see CONTRIBUTING.md): run from the repository root with the
# PML wheel in .whl/ (the machine has torch/torchvision/timm but no PML, and no network). Writes under $OUT.
#   loss: fp16/bf16 autocast checks and device-vs-float64 agreement; loss_speed at B = 4000 and 10000 (+ SiMix)
#   trainer: ResNet-50 at B = 4000, chunk 200, fp32 and bf16, peak memory and images/s; gradient equality on CUDA
#   paths (issue 13): the Triton kernels' tests compiled on the device; loss_speed --paths at B = 4k, 10k, 100k,
#   250k: dense (where it fits) vs tiled vs fused vs the tiled floor, time and peak memory
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/nvidia_smi.txt"
timeout 120 python3 benchmarks/gpu_loss_check.py --device cuda
timeout 240 python3 benchmarks/gpu_trainer_check.py 2>&1 | tail -60
timeout 220 python3 benchmarks/loss_speed.py --device cuda --sizes 4000 10000 --simix-sizes 4000 --repeats 5 \
    --timeout 60 --out "$OUT/loss_speed_cuda" 2>&1 | tail -30
PML_RECALLK_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider tests/losses/test_tiled_triton.py \
    2>&1 | tail -5 | tee "$OUT/triton_kernel_tests.txt"
timeout 420 python3 benchmarks/loss_speed.py --paths --device cuda --sizes 4000 10000 100000 250000 \
    --dense-max 100000 --repeats 3 --timeout 200 --out "$OUT/loss_speed_tiled_cuda" 2>&1 | tail -20
