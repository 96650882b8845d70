#!/usr/bin/env bash
# Check that the version ranges in pyproject.toml hold: each lane installs planlm into a FRESH virtualenv (never the
# machine's site-packages) with scripts/setup.sh and runs the fast test suite (scripts/test.sh), then the results of
# every lane (key package versions, the pytest summary line, the time it took) are printed at the end.
#
#   bash scripts/check-ranges.sh                  # lowest and newest
#   bash scripts/check-ranges.sh lowest           # one lane (lowest | newest | lock)
#   bash scripts/check-ranges.sh lowest -- -k cli # arguments after -- go to pytest
#
# Lanes:
#   lowest  PLANLM_LOWEST=1: every direct dependency (pyproject [project.dependencies] and the test extra) pinned to
#           its lower bound (`>=X` -> `==X`, scripts/lower-bounds.py); transitive dependencies resolve freely but
#           cannot move a direct one. Every lower bound in pyproject.toml must pass here: raise a bound rather than
#           promise an untested one.
#   newest  PLANLM_UNPINNED=1: no lock, the newest versions pyproject.toml allows. Run it before each lock refresh
#           (scripts/refresh-lock.sh takes exactly these versions into requirements/lock.txt when they pass).
#   lock    the default install with requirements/lock.txt (what CI and `bash scripts/test.sh` test).
#
# torch: the only CPU build obtainable where this was written is torch 2.13.0 (a local wheel; every other torch on
# PyPI for Linux is a multi-GB CUDA build, and the CPU index download.pytorch.org is not reachable there). An older
# torch could not be tested, so the torch lower bound in pyproject.toml was raised to the build that was tested (2.13.0)
# instead of keeping an untested `>=2.6`, and the lowest lane installs it through the same constraints file as the
# rest. The newest lane keeps scripts/setup.sh's torch pin (2.13.0) for the same reason: it is "newest" for everything
# but torch. Where a torch CPU index is reachable, set PLANLM_TORCH_INDEX=https://download.pytorch.org/whl/cpu (used by
# scripts/setup.sh) to test with a CPU build from there; lowering the torch bound then needs a lowest-lane pass.
#
# Environment: PLANLM_LANES_DIR=DIR keeps the virtualenvs and logs there (DIR/lane-NAME, DIR/lane-NAME.log) instead of
# a temporary folder removed at exit. Exit status: 0 when every lane passed.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

lanes=()
while [ $# -gt 0 ]; do
  case "$1" in
    lowest|newest|lock) lanes+=("$1"); shift ;;
    both) lanes+=(lowest newest); shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "check-ranges.sh: unknown lane '$1' (lowest | newest | lock | both; pytest arguments go after --)" >&2; exit 2 ;;
  esac
done
[ ${#lanes[@]} -gt 0 ] || lanes=(lowest newest)

if [ -n "${PLANLM_LANES_DIR:-}" ]; then
  root=$PLANLM_LANES_DIR
  mkdir -p "$root"
else
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
fi
unset PYTHONPATH PIP_USER PLANLM_LOWEST PLANLM_UNPINNED
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

key_packages="torch transformers tokenizers huggingface-hub sentence-transformers lightning numpy datasets pyarrow faiss-cpu scikit-learn spacy gensim jsonargparse"
results=()
failed=0

run_lane() {  # run_lane NAME [pytest args...]: fresh venv, setup + fast suite; sets $summary, $versions, $lane_rc
  local name=$1; shift
  local venv="$root/lane-$name" log="$root/lane-$name.log"
  rm -rf "$venv"
  python3 -m venv "$venv"
  (
    # shellcheck disable=SC1091
    . "$venv/bin/activate"
    python3 -c 'import sys; assert sys.prefix != sys.base_prefix, "not in a virtualenv"' || exit 1
    case "$name" in
      lowest) export PLANLM_LOWEST=1 ;;
      newest) export PLANLM_UNPINNED=1 ;;
    esac
    bash scripts/test.sh "$@"
  ) 2>&1 | tee "$log"
  lane_rc=${PIPESTATUS[0]}
  summary=$(grep -aE '^(=+ )?[0-9]+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed)\b.* in [0-9.]+s|no tests ran' "$log" | tail -1 | sed -E 's/^=+ //; s/ =+$//')
  [ -n "$summary" ] || summary="no pytest summary: setup failed (see the install errors above)"
  versions=$("$venv/bin/python3" - $key_packages <<'EOF' 2>/dev/null || echo "(not installed)"
import sys
from importlib import metadata
out = []
for name in sys.argv[1:]:
    try:
        out.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        out.append(f"{name} -")
print(f"Python {sys.version.split()[0]}, " + ", ".join(out))
EOF
)
}

for lane in "${lanes[@]}"; do
  echo "=== check-ranges: lane '$lane' (fresh virtualenv $root/lane-$lane) ==="
  start=$(date +%s)
  run_lane "$lane" "$@"
  secs=$(( $(date +%s) - start ))
  status=passed
  if [ "$lane_rc" -ne 0 ]; then status="FAILED (exit $lane_rc)"; failed=1; fi
  results+=("$lane: $status, $((secs / 60))m$((secs % 60))s, $(date +%F)"$'\n'"  versions: $versions"$'\n'"  pytest: $summary")
  echo "=== check-ranges: lane '$lane' $status in $((secs / 60))m$((secs % 60))s ==="
done

echo
echo "=== check-ranges results ($repo) ==="
for r in "${results[@]}"; do echo "$r"; done
exit $failed
