#!/usr/bin/env bash
# Build the inverse-check judge base (README, "The inverse-check judge"): the shipped model's
# solve SFT continued on training problems mixed with their inverse forms (10,000 steps,
# lr 1e-3), then 400 SFT steps of judge traces with the inverse check and verdicts that always
# follow the trace (p = 1.0). About 30 minutes on this 2-core machine.
# Run: research/build_inverse_judge.sh [OUT]   (default data/inverse-judge)
# Environment: POOL=SEED trains both stages on a fresh synthetic pool (that generator seed) minus
# the run's training problems, so the RL run's problems stay unseen (data/inverse-judge-fresh);
# JUDGE_STEPS=N judge SFT steps instead of 400; DEVICE=cuda and PY=python3 for a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/inverse-judge}
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cpu}
JUDGE_STEPS=${JUDGE_STEPS:-400}
POOL_ARGS=()
if [[ -n "${POOL:-}" ]]; then POOL_ARGS=(--pool "$POOL"); fi
"$PY" research/teach_inverse.py --lr 1e-3 --steps 10000 --device "$DEVICE" "${POOL_ARGS[@]}" --out "$OUT-solver"
"$PY" research/weak_judge.py --from "$OUT-solver" --check inverse --p 1.0 --steps "$JUDGE_STEPS" --device "$DEVICE" \
  "${POOL_ARGS[@]}" --out "$OUT"
