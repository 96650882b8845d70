#!/usr/bin/env bash
# One GPU check of planlm (bench/gpu_check.py has the steps and sizes; docs/performance.md "GPU check").
#
#   bash bench/gpu_check.sh --prepare          # HERE, once: .whl/ (3 wheels) and .gpu-data/ (a prepared corpus)
#   bash bench/gpu_check.sh                    # on the GPU machine: at most 8 minutes, writes $OUT/gpu_check.json
#   DEVICE=cpu bash bench/gpu_check.sh --smoke # the same steps with tiny sizes on a CPU (a few minutes)
#
# On the GPU machine: carry .whl and .gpu-data (both git-ignored). Extra arguments go to bench/gpu_check.py.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "--prepare" ]; then
  shift
  exec "$PY" bench/gpu_check.py --prepare "$@"
fi
SITE=${SITE:-/tmp/site}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || echo "gpu_check.sh: installing .whl/*.whl into $SITE failed; going on" >&2
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_check.sh: no .whl/*.whl (run 'bash bench/gpu_check.sh --prepare' here and carry .whl)" >&2
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_check.py ${DEVICE:+--device "$DEVICE"} "$@"
