# visionline: one image for training pods, Prefect flow runs and TorchServe.
# Build: docker build -t ghcr.io/visionline/visionline:0.1.0 .
# CUDA: torch==2.14.1 from PyPI is the CUDA build; the NVIDIA runtime on the node
# provides the driver, so the same image trains on GPU nodes and serves on CPU nodes.

FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64

# Java 17 runs TorchServe's frontend; tini reaps the JVM's and workers' children.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 visionline \
 && useradd --system --uid 10001 --gid visionline --home-dir /app --shell /usr/sbin/nologin visionline

WORKDIR /app

# Dependencies first, for layer caching: they change far less often than the code.
COPY pyproject.toml README.md ./
COPY src/visionline/__init__.py src/visionline/__init__.py
RUN pip install --upgrade pip \
 && pip install .

COPY src ./src
COPY handlers ./handlers
COPY flows ./flows
COPY configs ./configs
COPY prefect.yaml ./
RUN pip install --no-deps -e . \
 && python -c "import visionline.training, visionline.serving.torchserve, flows.training_pipeline" \
 && mkdir -p /app/.visionline /tmp/torchserve \
 && chown -R visionline:visionline /app/.visionline /tmp/torchserve

USER 10001:10001
ENV HOME=/app \
    TMPDIR=/tmp/torchserve \
    PYTHONPATH=/app

# TorchServe inference (REST, gRPC). Management and metrics bind to loopback only.
EXPOSE 8080 7070

ENTRYPOINT ["/usr/bin/tini", "--"]
# Default: a training run (the Kubernetes Job overrides the arguments).
CMD ["python", "-m", "visionline.training", "--help"]
