#!/usr/bin/env bash
# Image smoke test: build the operator image and watch it, as a non-root user, reconcile a TransferJob
# against the emulated API server (tests/ship/image_smoke.py says exactly what is checked).
#
#   sudo scripts/image-smoke.sh            # as root: dockerd and debootstrap need it
#   sudo REF=HEAD scripts/image-smoke.sh   # build from a commit (git archive) instead of the working tree
#   sudo TARGET=trainer scripts/image-smoke.sh
#                                          # the trainer image instead: run the RayJob entrypoint on a tiny
#                                          # digits job inside it (local Ray, all stages), as its non-root user
#
# Nothing can be pulled here, so the base image is built locally: a Debian bookworm rootfs made with
# debootstrap (python3, python3-venv, ca-certificates), imported with `docker import` and passed to the
# Dockerfile as BASE_IMAGE. Python packages come from PyPI (the build runs on the host network).
# docker.io and debootstrap are installed from Debian when missing. The script runs its own dockerd on its
# own socket and data root (--bridge=none --iptables=false), so a docker already on the machine is left
# alone; the base image stays in that data root, and later runs skip debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$REPO/.cache/image-smoke
RUN=/run/graft-smoke
SOCK=$RUN/docker.sock
DATA=/var/lib/graft-smoke-docker
BASE=graft-smoke-base:bookworm
TARGET=${TARGET:-operator}
IMAGE=${IMAGE:-graft-$TARGET:smoke}
DOCKER=(/usr/bin/docker -H "unix://$SOCK")
START=$(date +%s)
step() { echo "[image-smoke $(( $(date +%s) - START ))s] $*" >&2; }

[[ $(id -u) == 0 ]] || { echo "image-smoke: run as root (it starts dockerd and runs debootstrap)" >&2; exit 2; }
[[ -x .venv/bin/python ]] || { echo "image-smoke: no .venv; run ./dev setup first" >&2; exit 2; }
mkdir -p "$WORK" "$RUN"
# One run at a time per machine: runs share the daemon, its data root and the image tag.
exec 9>"$RUN/lock"
flock 9

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || [[ ! -x /usr/bin/docker ]]; then
  step "installing docker.io and debootstrap from Debian"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io debootstrap >&2
fi

DOCKERD_PID=""
cleanup() {
  if [[ -n $DOCKERD_PID ]]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
if ! "${DOCKER[@]}" info >/dev/null 2>&1; then
  step "starting dockerd on $SOCK"
  dockerd --bridge=none --iptables=false --host "unix://$SOCK" --data-root "$DATA" \
    --exec-root "$RUN/exec" --pidfile "$RUN/dockerd.pid" >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do "${DOCKER[@]}" info >/dev/null 2>&1 && break; sleep 1; done
  "${DOCKER[@]}" info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log" >&2; exit 1; }
fi

if ! "${DOCKER[@]}" image inspect "$BASE" >/dev/null 2>&1; then
  ROOTFS=$WORK/rootfs
  if [[ ! -x $ROOTFS/usr/bin/python3 ]]; then
    step "debootstrap bookworm (minbase + python3, python3-venv, ca-certificates)"
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$ROOTFS" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
      || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  fi
  # The build fetches from PyPI through this machine's network, which may need this machine's CA bundle.
  cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
  step "importing the rootfs as $BASE"
  tar -C "$ROOTFS" -c . | "${DOCKER[@]}" import - "$BASE" >/dev/null
fi

BUILD=(build --network host --build-arg "BASE_IMAGE=$BASE" --target "$TARGET" --tag "$IMAGE")
if [[ -n ${REF:-} ]]; then
  step "building the $TARGET image ($IMAGE) FROM $BASE, from $REF"
  git archive --format=tar "$REF" | DOCKER_BUILDKIT=0 "${DOCKER[@]}" "${BUILD[@]}" - >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; exit 1; }
else
  step "building the $TARGET image ($IMAGE) FROM $BASE, from the working tree"
  DOCKER_BUILDKIT=0 "${DOCKER[@]}" "${BUILD[@]}" . >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; exit 1; }
fi
step "image built: $("${DOCKER[@]}" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

if [[ $TARGET == trainer ]]; then
  # The RayJob entrypoint (contract 1) on local Ray inside the image, as the image's user; then the ledger.
  step "running python -m graft_trainer on tests/ship/jobs/tiny-digits.yaml inside it"
  out=$("${DOCKER[@]}" run --rm --network host --shm-size 1g \
    --volume "$REPO/tests/ship/jobs:/jobs:ro" --env RAY_AUTH_MODE=disabled "$IMAGE" bash -c '
      set -e
      echo "uid=$(id -u) user=$(id -un)"
      python -m graft_trainer --job /jobs/tiny-digits.yaml --storage /tmp/graft-out >/tmp/trainer.log 2>&1 \
        || { tail -40 /tmp/trainer.log; exit 1; }
      graft status --output json /tmp/graft-out/0b5e7d1a-5d1c-4c61-9a53-2f1d8c1e7a01
    ' 2>&1) || { echo "$out" >&2; exit 1; }
  echo "$out" | head -1 >&2
  echo "$out" | grep -q '^uid=1000 user=ray$' || { echo "trainer image does not run as uid 1000 (ray)" >&2; exit 1; }
  states=$(echo "$out" | sed 1d | .venv/bin/python -c \
    'import json, sys; print(" ".join(s["type"] + "=" + s["state"] for s in json.load(sys.stdin)["stages"]))')
  step "ledger: $states"
  [[ $(grep -o '=Succeeded' <<<"$states" | wc -l) == 4 ]] || { echo "not every stage succeeded" >&2; exit 1; }
  echo "[image-smoke] PASS" >&2
else
  step "running it against the emulated API server"
  PYTHONPATH=tests RAY_AUTH_MODE=disabled .venv/bin/python -m ship.image_smoke --image "$IMAGE" --docker "${DOCKER[*]}"
fi
step "done"
