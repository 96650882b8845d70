#!/usr/bin/env bash
# Install planlm and everything it needs on a fresh machine (Python >= 3.10), at the versions the tests passed with.
# torch goes first and pinned: an unpinned torch pulls a multi-GB CUDA build (on a GPU machine, install the torch
# build you want first; this line then leaves it alone as long as it satisfies the pin, or skip it with PLANLM_TORCH=skip).
# Everything else is constrained by requirements/lock.txt (the tested versions); PLANLM_UNPINNED=1 installs the newest
# versions pyproject.toml allows instead (untested combinations; scripts/refresh-lock.sh tests them and rewrites the lock).
set -euo pipefail
cd "$(dirname "$0")/.."
lock=(-c requirements/lock.txt)
if [ "${PLANLM_UNPINNED:-0}" = "1" ]; then
  lock=()
fi
if [ "${PLANLM_TORCH:-}" != "skip" ]; then
  python3 -m pip install -q "${lock[@]}" "torch==${PLANLM_TORCH:-2.13.0}"
fi
python3 -m pip install -q "${lock[@]}" -e ".[test]"
