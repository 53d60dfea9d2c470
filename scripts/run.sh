#!/usr/bin/env bash
# The main job: set up, start the local Prefect server and the process serving `spark/iterate`,
# build the tiny model if it is missing (flow `bootstrap`), run one SPARK iteration through the
# deployment (`prefect deployment run spark/iterate --watch`), and say where to look.
# Each run continues the run `tiny` after its last completed iteration. Services keep running
# (the nightly 02:00 schedule needs them): `scripts/services.sh stop` ends them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
python -m deployments.services start
python -m flows.bootstrap_flow
prefect deployment run spark/iterate --watch
RUN=data/runs/tiny
spark sql "select iteration, phase, kind, count(*) as rollouts, round(avg(reward), 3) as reward from rollouts group by all order by all" --run "$RUN"
cat <<MSG

Where to look:
  Prefect UI:      http://127.0.0.1:4200  (flow runs, task runs, logs)
  MLflow curves:   .venv/bin/python -m deployments.services mlflow-ui   (binds 127.0.0.1 only)
                   then http://127.0.0.1:5000 (experiment "spark", run "tiny"); plot: $RUN/coevolution.png
  SQL over tables: .venv/bin/spark sql "select kind, count(*) from judge_data group by kind" --run $RUN
  One more iteration now:   source .venv/bin/activate && prefect deployment run spark/iterate --watch
  Stop the services:        scripts/services.sh stop
MSG
