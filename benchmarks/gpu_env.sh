# Sourced by the GPU scripts: install the carried wheels (.whl/, see README "Performance") that the
# lent machine's image lacks into /tmp/site and put them on PYTHONPATH; unbuffered output.
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
