# Ludus trainer service image: `ludus-server` on gRPC port 50051, Prometheus /metrics on 9090,
# checkpoints in the /checkpoints volume, demonstrations (.demo files for GAIL / behavioural cloning,
# and RecordDemonstration's recordings) in /demos, runs as an unprivileged user.
#
#   docker build -t ludus .
#   docker run --rm -p 50051:50051 -p 9090:9090 -v ludus-checkpoints:/checkpoints ludus
#
# Build arguments:
#   BASE_IMAGE       base image (default python:3.11-slim). A CUDA base without Python (Ubuntu or
#                    Debian based) works too: python3 and venv are installed from its apt sources.
#   TORCH_SPEC       the torch requirement (default torch==2.13.0). Installed before Ludus, whose
#                    `torch>=2.3` requirement keeps it.
#   TORCH_INDEX_URL  wheel index for torch (passed as --index-url): the PyTorch project's CPU index
#                    for a small CPU-only image on a host without local wheels, or one of its CUDA
#                    indexes. Empty (default): pip's configured indexes, where a local
#                    torch-2.13.0+cpu wheel (find-links) wins over the plain 2.13.0; PyPI alone
#                    serves the CUDA build for Linux x86_64 (several GB).
#   PIP_EXTRA_ARGS   extra arguments for both pip installs (e.g. --find-links /wheels).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""
ARG PIP_EXTRA_ARGS=""

LABEL org.opencontainers.image.title="ludus" \
      org.opencontainers.image.description="Ludus: a gRPC service that trains reinforcement-learning agents for external simulators" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/ludus \
    PATH=/opt/ludus/bin:$PATH

# Python for bases that lack it (CUDA images), the virtual environment, and the unprivileged user.
RUN set -eux; \
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/ludus; \
    groupadd --system --gid 10001 ludus; \
    useradd --system --uid 10001 --gid ludus --home-dir /home/ludus --create-home --shell /usr/sbin/nologin ludus; \
    mkdir -p /checkpoints /demos; \
    chown ludus:ludus /checkpoints /demos

# torch first, in its own layer: the largest and least often changing part.
RUN set -eux; set -f; \
    pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} $PIP_EXTRA_ARGS $TORCH_SPEC; \
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# The service (the `server` extra: no gym, no dev tools). Sources are installed, then removed.
COPY pyproject.toml README.md /tmp/ludus-src/
COPY client/ /tmp/ludus-src/client/
COPY service/ /tmp/ludus-src/service/
RUN set -eux; set -f; \
    pip install $PIP_EXTRA_ARGS "/tmp/ludus-src[server]"; \
    rm -rf /tmp/ludus-src; \
    ludus-server --version; \
    python -c "import ludus_service.cli, ludus_service.security, ludus_service.healthcheck"

USER ludus
WORKDIR /home/ludus
VOLUME /checkpoints /demos
EXPOSE 50051 9090

# The standard gRPC health service (needs no token). For a TLS port set LUDUS_HEALTHCHECK_TLS_CA
# (and LUDUS_HEALTHCHECK_TLS_CERT/_KEY for mutual TLS); for another port LUDUS_HEALTHCHECK_TARGET.
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 CMD ["ludus-healthcheck", "--quiet"]

# Exec form, no shell: ludus-server is PID 1 and handles SIGTERM itself (graceful drain, checkpoint).
STOPSIGNAL SIGTERM
ENTRYPOINT ["ludus-server"]
CMD ["--host", "0.0.0.0", "--port", "50051", "--checkpoint-dir", "/checkpoints", "--demo-dir", "/demos", "--metrics-port", "9090"]
