#!/usr/bin/env bash
# Start, stop or inspect the local Prefect server and the process serving spark/iterate.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m deployments.services "${1:-status}" "${@:2}"
