#!/usr/bin/env bash
# Rewrite requirements/lock.txt: a fresh virtualenv, the newest versions pyproject.toml allows (PLANLM_UNPINNED=1),
# the fast test suite, and only if it passes, the venv's exact versions (minus planlm itself and torch, which
# scripts/setup.sh pins on its own) as the new lock. Review `git diff requirements/lock.txt` and commit it.
# Before a refresh, run `bash scripts/check-ranges.sh` (the newest lane is this install; the lowest lane checks that
# pyproject.toml's lower bounds still pass), and update the README's tested-versions sentence with its results.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
PLANLM_UNPINNED=1 bash scripts/test.sh "$@"
{
  sed -n '/^#/p' "$repo/requirements/lock.txt"
  python3 -m pip freeze --exclude-editable --exclude planlm --exclude torch
} > "$repo/requirements/lock.txt.new"
mv "$repo/requirements/lock.txt.new" "$repo/requirements/lock.txt"
echo "requirements/lock.txt rewritten from a passing fresh install; review it with git diff"
