#!/usr/bin/env bash
# The real-model experiment on the lent GPU (issue 16 D), the last of the calls that
# research/gpu_pieces.sh describes: join the model's pieces sent earlier into /tmp/spark-pieces,
# check size and SHA-256, import it, run GRPO policy-only against SPARK (safeguarded, and with
# expected judge rewards) at equal optimizer steps, and leave the results in $OUT/experiment-real.
# Knobs: N (iterations, default 4), ARMS, SEEDS, CONFIG. About 8 minutes on an H200 (estimate).
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .gpu/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
MODEL=$(cat .gpu/model 2>/dev/null || echo qwen2.5-coder-0.5b-instruct)
PIECES=${PIECES:-/tmp/spark-pieces}
N=${N:-4}
CONFIG=${CONFIG:-configs/qwen2.5-coder-0.5b-gpu-experiment.yaml}
ARMS=${ARMS:-base grpo_policy spark_safeguarded spark_expected}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
start=$(date +%s)
python3 research/real_experiment.py --join "$PIECES" "$MODEL" /tmp/model.gguf 2>&1 | tee "$OUT/join.txt" || exit 2
ct=$(python3 -c "from spark_core.model.models import REGISTRY; print(REGISTRY['$MODEL'].chat_template or '')")
python3 -m spark_cli.main model import /tmp/model.gguf --out "data/models/$MODEL" ${ct:+--chat-template "$ct"} 2>&1 \
  | tee "$OUT/import.txt" || exit 3
echo "model ready in $(( $(date +%s) - start )) s" | tee -a "$OUT/import.txt"
arm_args=(); for a in $ARMS; do arm_args+=(--arm "$a"); done
seed_args=(); for s in ${SEEDS:-0}; do seed_args+=(--seed "$s"); done
timeout $(( 560 - ($(date +%s) - start) )) python3 research/real_experiment.py -c "$CONFIG" --iterations "$N" \
  "${arm_args[@]}" "${seed_args[@]}" --out "$OUT/experiment-real" 2>&1 | tee "$OUT/experiment.txt"
echo "total $(( $(date +%s) - start )) s" | tee -a "$OUT/experiment.txt"
