#!/usr/bin/env bash
# The main job. So far: set up, then run the pipeline stages that exist on the tiny config
# (the problems stage), and show how to query the run. Re-running skips finished stages.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
CONFIG=${1:-configs/tiny.yaml}
RUN=${2:-data/runs/tiny}
.venv/bin/spark prepare --config "$CONFIG" --run "$RUN"
.venv/bin/spark sql "select split, count(*) as problems, min(question) as example from problems group by split order by split" --run "$RUN"
echo
echo "Query the run:  .venv/bin/spark sql \"select * from problems limit 5\" --run $RUN"
