#!/usr/bin/env bash
# The operator's 200-job burst (bench/operator_bench.py) for this checkout and for an older commit, interleaved
# (new, old, old, new, ...), so that both see the same machine. The old commit runs its own benchmark and
# operator from `git archive REF`, with this checkout's venv.
#   bench/operator_vs.sh REF [ROUNDS] [-- operator_bench.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: bench/operator_vs.sh REF [ROUNDS] [-- ARGS]}; shift
rounds=2
if [[ $# -gt 0 && $1 != -- ]]; then rounds=$1; shift; fi
[[ ${1:-} == -- ]] && shift
py=$PWD/.venv/bin/python
# Beside this checkout, so that the old tests/support finds the same ../shared (the KubeRay CRDs) this one does.
base=$(mktemp -d "$(dirname "$PWD")/.graft-base-XXXXXX"); trap 'rm -rf "$base"' EXIT
git archive "$ref" | tar -x -C "$base"
run() {
  echo "=== $1 (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  # A run that misses the benchmark's goals exits 1: that is a figure to compare, not a reason to stop.
  if [[ $1 == new ]]; then "$py" bench/operator_bench.py "${@:2}" || echo "(exit $?)"
  else (cd "$base" && PYTHONPATH=$base "$py" bench/operator_bench.py "${@:2}") || echo "(exit $?)"; fi
}
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then run new "$@"; run "$ref" "$@"; else run "$ref" "$@"; run new "$@"; fi
done
