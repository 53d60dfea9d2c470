set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name --format=csv,noheader
POOL=7 DEVICE=cuda PY=python3 timeout 530 bash benchmarks/build_inverse_judge.sh "$OUT/inverse-judge-fresh" 2>&1 | tee "$OUT/build_fresh.txt"
