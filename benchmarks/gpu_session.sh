#!/usr/bin/env bash
# The device checks, as one script for a lent GPU machine (its image has torch and
# transformers; carry the few wheels it lacks in .whl/, see README "Performance").
# Writes logs to $OUT (or ./gpu-out). Usage on the machine: bash benchmarks/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"
# 1. The CUDA tests, and the trainer and model-layer suites on this machine.
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_trainer.py tests/test_model_layer.py 2>&1 | tee "$OUT/pytest.txt"
# 2. The pipeline stages end to end on the GPU: the tiny default shape, then an 85M model.
timeout 90 python3 benchmarks/gpu_check.py --small --iterations 2 2>&1 | tee "$OUT/gpu_check_small.txt"
timeout 270 python3 benchmarks/gpu_check.py --iterations 2 2>&1 | tee "$OUT/gpu_check.txt"
