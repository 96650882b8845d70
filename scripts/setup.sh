#!/usr/bin/env bash
# Install planlm and everything it needs on a fresh machine (Python >= 3.10).
# torch goes first and pinned: an unpinned torch pulls a multi-GB CUDA build (on a GPU machine, install the torch
# build you want first; this line then leaves it alone as long as it satisfies the pin, or skip it with PLANLM_TORCH=skip).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${PLANLM_TORCH:-}" != "skip" ]; then
  python3 -m pip install -q "torch==${PLANLM_TORCH:-2.13.0}"
fi
python3 -m pip install -q -e ".[test]"
