# Graft container images (linux/amd64). Two targets:
#
#   docker build --target operator -t ghcr.io/graft-dev/graft-operator:0.1.0 .
#   docker build --target trainer  -t ghcr.io/graft-dev/graft-trainer:0.1.0 .
#
# operator: the kopf operator (`graft operator`), no torch or Ray; about 400 MB.
# trainer:  torch, torchvision, Ray and the trainer; the image of the RayJob's head and workers (the
#           TransferJob's spec.image). The PyPI torch 2.14.1 wheel is the CUDA 13.0 build: the same image
#           runs on CPU nodes and on GPU nodes whose NVIDIA driver supports CUDA 13.0 (R580 or newer), with
#           the NVIDIA device plugin. No CUDA base image is needed; the CUDA runtime comes in the wheels.
#
# Every Python distribution is pinned in docker/requirements-*.txt (scripts/locks.py writes them as subsets of
# requirements-dev.txt, the environment the tests run in) and installed with --no-deps; the setuptools pin
# below is the lock's too (a test keeps them equal). Build tools stay in the build stages.
# Stages are ordered so that the classic builder (which builds every stage before the target) never builds
# the trainer's dependencies for the operator image.
#
# BASE_IMAGE may be any Debian bookworm image with python3 (3.11), python3-venv and ca-certificates; the
# image smoke test (scripts/image-smoke.sh) builds one with debootstrap because it cannot pull.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A throw-away venv with the pinned build backend, so the graft wheel builds without fetching an
# unpinned setuptools (no build isolation).
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install setuptools==84.2.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY graft ./graft
COPY operator ./operator
COPY trainer ./trainer
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .
# Leave /src: with it as the working directory, `python3 -m ...` would import the source tree's
# operator/ folder in place of the standard library's `operator` module.
WORKDIR /

# ------------------------------------------------------------------------------------- operator deps
FROM ${BASE_IMAGE} AS build-operator
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Dependencies first, in their own layer: a code change rebuilds only the small graft layer below.
COPY docker/requirements-operator.txt /tmp/requirements.txt
RUN python3 -m venv /opt/graft \
 && /opt/graft/bin/pip install --no-deps --requirement /tmp/requirements.txt
COPY --from=build /wheels /wheels
RUN /opt/graft/bin/pip install --no-deps /wheels/graft-*.whl \
 # The operator never installs anything at run time: pip and setuptools do not ship in it.
 && /opt/graft/bin/pip uninstall --yes pip setuptools \
 && /opt/graft/bin/python -c "import graft_operator, kopf"

# ------------------------------------------------------------------------------------------ operator
FROM ${BASE_IMAGE} AS operator
# kopf names itself after the OS user (getpass.getuser()), which needs a passwd entry for the uid; the
# chart's runAsUser/runAsGroup (10001) match this user.
RUN groupadd --system --gid 10001 graft \
 && useradd --system --uid 10001 --gid graft --home-dir /home/graft --create-home --shell /usr/sbin/nologin graft
COPY --from=build-operator /opt/graft /opt/graft
ENV PATH=/opt/graft/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/graft
# 8080: Prometheus metrics, 8081: liveness (/healthz).
EXPOSE 8080 8081
ENTRYPOINT ["graft", "operator"]
CMD ["--all-namespaces"]

# -------------------------------------------------------------------------------------- trainer deps
FROM ${BASE_IMAGE} AS build-trainer
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY docker/requirements-trainer.txt /tmp/requirements.txt
RUN python3 -m venv /opt/graft \
 && /opt/graft/bin/pip install --no-deps --requirement /tmp/requirements.txt
COPY --from=build /wheels /wheels
RUN /opt/graft/bin/pip install --no-deps /wheels/graft-*.whl \
 && /opt/graft/bin/python -c "import graft_trainer, torch, torchvision, ray, timm"

# ------------------------------------------------------------------------------------------- trainer
FROM ${BASE_IMAGE} AS trainer
# KubeRay's head and worker probes run `wget ... | grep success` inside the container.
RUN apt-get update \
 && apt-get install --yes --no-install-recommends wget=1.21.3-1+deb12u1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 ray \
 && useradd --uid 1000 --gid ray --home-dir /home/ray --create-home --shell /bin/bash ray
COPY --from=build-trainer /opt/graft /opt/graft
ENV PATH=/opt/graft/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0
USER 1000:1000
WORKDIR /home/ray
# The RayJob entrypoint is `python -m graft_trainer --job ...`; KubeRay starts Ray itself, so the image
# needs no entrypoint of its own.
CMD ["python", "-m", "graft_trainer", "--help"]
