"""The deployment `iterate` of flow `spark`, served by this process (the embedded default).

    python -m deployments.iterate          # usually started by `python -m deployments.services start`

Registers `spark/iterate` with the Prefect server at PREFECT_API_URL, with a nightly cron
schedule, and runs its flow runs (scheduled or `prefect deployment run spark/iterate`) in
subprocesses until stopped. Environment:

    SPARK_CRON       cron expression (default "0 2 * * *": 02:00 every night)
    SPARK_TIMEZONE   IANA time zone of the schedule (default UTC)
    SPARK_RUN        run name the deployment extends (default "tiny")
    SPARK_CONFIG     config file (default configs/tiny.yaml)
    SPARK_SERVE_LIMIT  flow runs executed at once (default 1: queued runs take turns)

For a work pool and `prefect worker start` instead, see prefect.yaml in this folder.
"""

from __future__ import annotations

import os

from prefect.schedules import Cron

from flows.spark_flow import DEFAULT_CONFIG, spark

CRON = "0 2 * * *"


def main() -> None:
    spark.serve(
        name="iterate",
        schedules=[Cron(os.environ.get("SPARK_CRON", CRON), timezone=os.environ.get("SPARK_TIMEZONE", "UTC"))],
        parameters={"run": os.environ.get("SPARK_RUN", "tiny"), "config": os.environ.get("SPARK_CONFIG", DEFAULT_CONFIG)},
        description="One more SPARK iteration (or the config's `iterations`) on the run, nightly.",
        tags=["spark"],
        # One flow run at a time: queued runs wait their turn (one machine, one model in
        # memory; runs on the same run directory would otherwise race for its lock).
        limit=int(os.environ.get("SPARK_SERVE_LIMIT", "1")),
    )


if __name__ == "__main__":
    main()
