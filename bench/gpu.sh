#!/usr/bin/env bash
# One command for a GPU machine (H200): FullFineTune of ResNet-50 and of timm's ViT-B/16
# (timm:vit_base_patch16_224, random weights) with bf16 autocast and channels_last on synthetic data
# (builtin:digits upscaled to 224x224), each run as a Ray Train stage (1 GPU worker) and as a plain torch
# loop on the same model and data in the same run. Prints images/s of both and the ratio, per model.
#   bench/gpu.sh           on the GPU machine (about 5-8 minutes; hard limit 570 s)
#   bench/gpu.sh --tiny    CPU smoke mode (small images, few steps): proves the script works
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONPATH="${PYTHONPATH:-}"
# Without an editable install (a bare GPU box), map the source folders to the graft.* package names.
if ! "$PY" -c 'import graft_trainer' 2>/dev/null; then
  shim=$(mktemp -d)
  mkdir -p "$shim/graft"
  for f in graft/*; do ln -s "$PWD/$f" "$shim/graft/$(basename "$f")"; done
  ln -s "$PWD/trainer" "$shim/graft/trainer"
  ln -s "$PWD/operator" "$shim/graft/operator"
  export PYTHONPATH="$shim:$PYTHONPATH"
fi
exec timeout 570 "$PY" bench/trainer_bench.py gpu "$@"
