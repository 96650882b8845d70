#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: `planlm run` on the embedded default corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
planlm run "$@"
