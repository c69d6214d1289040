#!/usr/bin/env bash
# The operator's 200-job burst (bench/operator_bench.py) with this checkout's operator and with an older commit's,
# interleaved (new, old, old, new, ...) so that both see the same machine. Both runs use this checkout's benchmark,
# emulated API server and fake KubeRay: only the operator differs (the old one runs from `git archive REF` with this
# checkout's venv, through operator_bench.py --operator-python).
#   bench/operator_vs.sh REF [ROUNDS] [-- operator_bench.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: bench/operator_vs.sh REF [ROUNDS] [-- ARGS]}; shift
rounds=2
if [[ $# -gt 0 && $1 != -- ]]; then rounds=$1; shift; fi
[[ ${1:-} == -- ]] && shift
py=$PWD/.venv/bin/python
base=$(mktemp -d "$(dirname "$PWD")/.graft-base-XXXXXX"); trap 'rm -rf "$base"' EXIT
git archive "$ref" | tar -x -C "$base"
# An interpreter that imports each side's code first: the old tree (both layouts: graft/ at the root, and the
# operator/ and trainer/ package folders), or this checkout.
for side in new old; do
  root=$PWD; [[ $side == old ]] && root=$base
  printf '#!/bin/sh\nPYTHONPATH=%s:%s/operator:%s/trainer exec %s "$@"\n' "$root" "$root" "$root" "$py" > "$base/python-$side"
  chmod +x "$base/python-$side"
done
run() {
  echo "=== $1$([[ $1 == old ]] && echo " ($ref)") (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  # A run that misses the benchmark's goals exits 1: that is a figure to compare, not a reason to stop.
  "$py" bench/operator_bench.py --operator-python "$base/python-$1" "${@:2}" || echo "(exit $?)"
}
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then run new "$@"; run old "$@"; else run old "$@"; run new "$@"; fi
done
