#!/usr/bin/env bash
# The main job. So far: set up, then run one SPARK iteration (policy period, recycling into the
# judge cache, reward period, checkpoint) on the tiny config, continuing the run if it exists,
# and show how to query it. The Prefect flow/deployment will take this over (open issue).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
CONFIG=${1:-configs/tiny.yaml}
RUN=${2:-data/runs/tiny}
ITERATIONS=${ITERATIONS:-1}
.venv/bin/spark iterate --config "$CONFIG" --run "$RUN" --iterations "$ITERATIONS"
.venv/bin/spark sql "select iteration, phase, kind, count(*) as rollouts, round(avg(reward), 3) as reward from rollouts group by all order by all" --run "$RUN"
.venv/bin/spark sql "select kind, count(*) as made, count(iteration_consumed) as consumed from judge_data group by kind order by kind" --run "$RUN"
echo
echo "Query the run:  .venv/bin/spark sql \"select kind, count(*) from judge_data group by kind\" --run $RUN"
echo "Another iteration: ./scripts/run.sh (each run continues after the last completed iteration)"
