#!/usr/bin/env bash
# Build the inverse-check judge base (README, "The inverse-check judge"): the shipped model's
# solve SFT continued on its training problems mixed with their inverse forms (10,000 steps,
# lr 1e-3), then 400 SFT steps of judge traces with the inverse check and verdicts that always
# follow the trace (p = 1.0). About 30 minutes on this 2-core machine.
# Run: benchmarks/build_inverse_judge.sh [OUT]   (default data/inverse-judge)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/inverse-judge}
.venv/bin/python benchmarks/teach_inverse.py --lr 1e-3 --steps 10000 --out "$OUT-solver"
.venv/bin/python benchmarks/weak_judge.py --from "$OUT-solver" --check inverse --p 1.0 --steps 400 --out "$OUT"
