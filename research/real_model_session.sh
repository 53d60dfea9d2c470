#!/usr/bin/env bash
# The real-model measurements of the README's "Real models" section, in one go on this CPU
# (about 40 minutes): the base model's baselines, a labelled judge-eval of 40 chain-of-thought
# MATH-500 responses (base and, if given, a warmed-up checkpoint), and the memory benchmark.
#   bash research/real_model_session.sh [WARMED_UP_CHECKPOINT]
# Outputs under docs/bench/real/ and docs/bench/memory.json.
set -euo pipefail
cd "$(dirname "$0")/.."
M=data/models/qwen2.5-coder-0.5b-instruct
C=configs/qwen2.5-coder-0.5b-cpu.yaml
OUT=docs/bench/real
mkdir -p "$OUT"
S=.venv/bin/spark
[ -d "$M" ] || $S model fetch qwen2.5-coder-0.5b-instruct
time .venv/bin/python research/real_baselines.py --checkpoint "$M" --out "$OUT/baselines_base.json"
# 40 real chain-of-thought responses to MATH-500, labelled by the verifier, judged by the model
time $S eval --checkpoint "$M" -c "$C" --benchmark math500 --limit 40 --solve step_by_step --max-new-tokens 384 \
  --responses "$OUT/math40_responses.jsonl" -o "$OUT/math40_eval.json"
$S verify "$OUT/math40_responses.jsonl" --response-field response --reference-field answer -o "$OUT/math40_labelled.parquet"
time $S judge-eval "$OUT/math40_labelled.parquet" --checkpoint "$M" --label-field correct --template-set paper \
  --judge-input cot --max-new-tokens 96 -o "$OUT/math40_judged_base.jsonl" | tee "$OUT/math40_judge_base.txt"
if [ -n "${1:-}" ]; then
  time $S judge-eval "$OUT/math40_labelled.parquet" --checkpoint "$1" --label-field correct --template-set paper \
    --judge-input cot --max-new-tokens 96 -o "$OUT/math40_judged_warmup.jsonl" | tee "$OUT/math40_judge_warmup.txt"
  time .venv/bin/python research/real_baselines.py --checkpoint "$1" --gsm8k 0 --out "$OUT/baselines_warmup.json"
fi
time .venv/bin/python benchmarks/bench_memory.py
