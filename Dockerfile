# syntax=docker/dockerfile:1
# visionline's images, from one file:
#   --target trainer  training Jobs, Prefect flow runs and the Prefect worker
#   --target server   the serving pod on CPU nodes: TorchServe in the foreground, the nginx
#                     auth front, and the init container that fetches the model archive;
#                     torch's CPU build, no CUDA libraries (about 4 GB less)
#   --target server-gpu  the same on GPU nodes (the gpu overlay), with torch's CUDA build
# The image has no git: pass the revision, which every artifact records as its origin.
#   docker build --target trainer \
#     --build-arg VISIONLINE_CODE_VERSION=$(git rev-parse --short=12 HEAD) \
#     -t ghcr.io/visionline/visionline-trainer:0.1.0 .
# Both run as uid 10001 on a read-only root filesystem in the cluster: what they write goes
# to emptyDirs mounted by the manifests (/tmp, HOME, the working directory).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------- base
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Debian packages are pinned to bookworm's current (security) versions: when Debian
# supersedes one, apt-get names it and the pin moves forward in a commit, never silently.
# tini is PID 1 (each target's ENTRYPOINT; manifests set `args`, never `command`, so it
# stays): it reaps zombies and passes SIGTERM on, which Python as PID 1 would drop until
# its handler is installed. The trainer's tini has no -g: SIGTERM goes to the trainer (or
# torchrun's agent) alone, whose handler checkpoints at the next batch and then stops its
# DataLoader workers itself; with -g the workers die at once and the checkpoint fails with
# "DataLoader worker killed".
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      tini=0.19.0-1+b3 \
      ca-certificates=20250419~deb12u2 \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 visionline \
 && useradd --system --uid 10001 --gid visionline --create-home \
      --home-dir /home/visionline --shell /usr/sbin/nologin visionline

# ---------------------------------------------------------------------------- builder
FROM base AS builder

RUN python -m venv /opt/venv
# Dependencies first, pinned (docker/requirements.txt): they change far less often than
# the code, so this layer stays cached across code changes.
COPY docker/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
COPY handlers ./handlers
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import visionline.training, visionline.serving.torchserve, visionline_handlers"

# ---------------------------------------------------------------------------- builder-cpu
# The CPU server's venv: torch and torchvision as PyTorch's CPU builds of the very versions
# pinned, then every other pin except the CUDA wheels (nvidia-*, cuda-*, triton), which a
# server on a CPU node would carry and never load.
FROM base AS builder-cpu

RUN python -m venv /opt/venv
COPY docker/requirements.txt /tmp/requirements.txt
RUN grep -Ev '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==' \
      /tmp/requirements.txt > /tmp/requirements-cpu.txt \
 && torch_version="$(sed -n 's/^torch==//p' /tmp/requirements.txt)" \
 && vision_version="$(sed -n 's/^torchvision==//p' /tmp/requirements.txt)" \
 && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
      "torch==${torch_version}+cpu" "torchvision==${vision_version}+cpu" \
 && pip install --no-cache-dir -r /tmp/requirements-cpu.txt

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
COPY handlers ./handlers
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import torch, visionline.serving.torchserve, visionline_handlers; assert torch.version.cuda is None" \
 && python -c "import importlib.metadata as m, sys; sys.exit([d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].lower().startswith(('nvidia-', 'cuda-', 'triton'))] or None)"

# ---------------------------------------------------------------------------- trainer
FROM base AS trainer

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Flow code and configs: prefect.yaml's pull step runs flows from /app, and the retrain
# deployment reads configs/digits-k8s.yaml from here.
COPY flows ./flows
COPY configs ./configs
COPY prefect.yaml ./

# HOME must be writable for Prefect (~/.prefect) and torch's caches; in the cluster an
# emptyDir is mounted there, outside it the directory the user owns serves.
ENV HOME=/home/visionline \
    PREFECT_HOME=/home/visionline/.prefect \
    PYTHONPATH=/app

ARG VISIONLINE_CODE_VERSION=
ENV VISIONLINE_CODE_VERSION=${VISIONLINE_CODE_VERSION}
LABEL org.opencontainers.image.title="visionline-trainer" \
      org.opencontainers.image.revision=${VISIONLINE_CODE_VERSION}

USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "visionline.training", "--help"]

# ---------------------------------------------------------------------------- server-system
# What both serving images share: everything but the venv they copy (server-gpu: the CUDA
# build, server: the CPU build, last, so a build without --target gives it).
FROM base AS server-system

# Java 17 runs TorchServe's frontend; nginx is the pod's auth front. The JRE's postinst
# expects a man directory that slim images leave out.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      openjdk-17-jre-headless=17.0.21.1+2-1~deb12u1 \
      nginx=1.22.1-9+deb12u11 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /work \
 && chown 10001:10001 /work

# /work: the model store, TorchServe's config and logs (an emptyDir in the pod).
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    HOME=/work \
    LOG_LOCATION=/work/logs \
    METRICS_LOCATION=/work/logs

ARG VISIONLINE_CODE_VERSION=
ENV VISIONLINE_CODE_VERSION=${VISIONLINE_CODE_VERSION}
LABEL org.opencontainers.image.title="visionline-server" \
      org.opencontainers.image.revision=${VISIONLINE_CODE_VERSION}

USER 10001:10001
WORKDIR /work
# The serving pod's auth front listens on these (REST, gRPC); TorchServe itself only on
# the pod's loopback.
EXPOSE 8080 7070
ENTRYPOINT ["/usr/bin/tini", "-g", "--"]
# Foreground: `torchserve --start` daemonizes, and the container would exit at once.
CMD ["torchserve", "--foreground", "--ncs", "--ts-config", "/work/config.properties", "--model-store", "/work/model-store"]

# ---------------------------------------------------------------------------- server-gpu
FROM server-system AS server-gpu
COPY --from=builder /opt/venv /opt/venv
LABEL org.opencontainers.image.title="visionline-server-gpu"

# ---------------------------------------------------------------------------- server
FROM server-system AS server
COPY --from=builder-cpu /opt/venv /opt/venv
