#!/usr/bin/env bash
# Prepare, on this machine, what the GPU experiment sends (issue 16 D; research/gpu_real_experiment.sh):
# the model's joined GGUF split into pieces of PIECE_MIB (default 55) MiB under .gpu/pieces/, and
# the wheels the lent machine lacks under .gpu/whl/ (it has torch, transformers, pyarrow, yaml,
# typer; not pydantic, gguf or math-verify). .gpu/ is ignored by git: each device call carries
# what it needs (64 MiB a call, the working tree counted).
# Run: research/gpu_pieces.sh [MODEL]   (default qwen2.5-coder-0.5b-instruct; gemma-3-270m is half the size)
#
# Then, with the device tool, back to back (the machine is reset about 30 s after a command ends):
#   for each piece P:  run "mkdir -p /tmp/spark-pieces && cp .gpu/pieces/P /tmp/spark-pieces/"  carry [.gpu/pieces/P]
#   last:              run "bash research/gpu_real_experiment.sh"  carry [.gpu/whl]   (timeout_s 600)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-coder-0.5b-instruct}
PIECE_MIB=${PIECE_MIB:-55}
PY=${PY:-.venv/bin/python}
gguf=$("$PY" -c "
from spark_core.model.models import REGISTRY, cache_dir
print(cache_dir() / '$MODEL' / REGISTRY['$MODEL'].filename)")
if [[ ! -f "$gguf" ]]; then
  echo "no joined GGUF at $gguf: run .venv/bin/spark model fetch $MODEL first" >&2
  exit 1
fi
rm -rf .gpu/pieces && mkdir -p .gpu/pieces .gpu/whl
split -b "${PIECE_MIB}M" -d -a 2 "$gguf" .gpu/pieces/piece-
echo "$MODEL" > .gpu/model
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 gguf==0.19.0 math-verify==0.9.0 \
  latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
ls -l .gpu/pieces .gpu/whl
du -sh .gpu/pieces .gpu/whl
