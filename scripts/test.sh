#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the fast test suite (slow and GPU checks are skipped: `pytest -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pytest -q --timeout 600 "$@"
