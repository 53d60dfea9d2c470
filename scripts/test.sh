#!/usr/bin/env bash
# The test suite, after the same set-up as the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
