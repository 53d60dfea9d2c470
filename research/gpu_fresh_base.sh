#!/usr/bin/env bash
# Build the fresh-pool inverse-check judge base on a lent GPU machine (README, "A base that has
# not seen the RL problems"): research/build_inverse_judge.sh with POOL=7 on cuda, 395 s on an
# H100. Carry .whl/; the checkpoint comes back under $OUT/inverse-judge-fresh.
# Usage on the machine: bash research/gpu_fresh_base.sh   (JUDGE_STEPS=1200 for the one-run recipe)
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
POOL=7 DEVICE=cuda PY=python3 timeout 530 bash research/build_inverse_judge.sh "$OUT/inverse-judge-fresh" 2>&1 \
  | tee "$OUT/build_fresh.txt"
