# syntax=docker/dockerfile:1
#
# rnnserve server image. CPU by default (torch's CPU wheel, a slim image):
#
#   docker build -t rnnserve:cpu .
#
# CUDA variant (torch's CUDA wheel from PyPI, which brings its CUDA runtime as nvidia-* wheels;
# the host needs an NVIDIA driver and the NVIDIA Container Toolkit):
#
#   docker build --build-arg TORCH_VARIANT=cuda -t rnnserve:cuda .
#
# Build arguments for other base images and package sources (e.g. behind a corporate proxy or
# offline; `make e2e` uses them with a Debian base made by debootstrap and a local index):
#   BASE_IMAGE        the image both stages start from; it needs python3 (3.11, with venv),
#                     ca-certificates, groupadd/useradd (default python:3.11-slim-bookworm)
#   PIP_INDEX_URL     the package index for everything but torch (default https://pypi.org/simple)
#   PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST   more sources (space-separated lists)
#   TORCH_INDEX_URL   the index torch comes from (default: PyTorch's CPU index for cpu,
#                     PIP_INDEX_URL for cuda), e.g. https://download.pytorch.org/whl/cu128
#   EXTRA_CA_CERTS    PEM text of extra CA certificates pip must trust (a TLS-inspecting proxy):
#                     --build-arg EXTRA_CA_CERTS="$(cat corp-ca.pem)"
# The torch version is the one pinned in pyproject.toml. See docs/deploy.md.

ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

# ---- build: a virtual environment with torch and rnnserve -------------------------------------
FROM ${BASE_IMAGE} AS build

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=""
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ARG PIP_TRUSTED_HOST=""
ARG EXTRA_CA_CERTS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# The package sources become the build stage's /etc/pip.conf (empty arguments are left out, as
# pip would read an empty PIP_* variable as a source); extra CAs join the system bundle, which
# pip is told to use. Neither reaches the runtime stage.
RUN set -eu; \
    if [ -n "$EXTRA_CA_CERTS" ]; then \
      printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/build-extra-ca.crt; \
      update-ca-certificates; \
    fi; \
    { echo "[global]"; \
      echo "cert = /etc/ssl/certs/ca-certificates.crt"; \
      echo "index-url = $PIP_INDEX_URL"; \
      if [ -n "$PIP_EXTRA_INDEX_URL" ]; then echo "extra-index-url = $PIP_EXTRA_INDEX_URL"; fi; \
      if [ -n "$PIP_FIND_LINKS" ]; then echo "find-links = $PIP_FIND_LINKS"; fi; \
      if [ -n "$PIP_TRUSTED_HOST" ]; then echo "trusted-host = $PIP_TRUSTED_HOST"; fi; \
    } > /etc/pip.conf; \
    unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST; \
    python3 -m venv /opt/venv

WORKDIR /src

# torch first (the biggest layer, cached until pyproject.toml changes), from the variant's index.
# The version is pinned: it is read from pyproject.toml ("torch==X.Y.Z"), which hadolint can't see.
COPY pyproject.toml ./
# hadolint ignore=DL3013
RUN set -eu; \
    unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST; \
    torch_pin="$(sed -n 's/^[[:space:]]*"\(torch==[^"]*\)",\{0,1\}[[:space:]]*$/\1/p' pyproject.toml)"; \
    test -n "$torch_pin" || { echo "no torch==... pin in pyproject.toml" >&2; exit 1; }; \
    case "$TORCH_VARIANT" in \
      cpu)  index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX_URL:-$(sed -n 's/^index-url = //p' /etc/pip.conf)}" ;; \
      *)    echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install --index-url "$index" "$torch_pin"

# Then the project itself (a regular, non-editable install: only rnnserve/ lands in site-packages;
# the torch already installed satisfies the pin, including the CPU wheel's +cpu local version).
# Its dependencies are pinned or bounded in pyproject.toml.
COPY README.md ./
COPY proto/ proto/
COPY server/ server/
COPY client/ client/
COPY models/ models/
RUN unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST \
 && pip install . \
 && python -c "import rnnserve.server, rnnserve.client, rnnserve.models, rnnserve.v1"

# ---- runtime ------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="rnnserve" \
      org.opencontainers.image.description="gRPC inference server for recurrent neural networks" \
      org.opencontainers.image.licenses="MIT" \
      io.rnnserve.torch-variant="${TORCH_VARIANT}"

# Inside a container the server must listen on all interfaces (its defaults are loopback only).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RNNSERVE_HOST=0.0.0.0 \
    RNNSERVE_PORT=50051 \
    RNNSERVE_METRICS_HOST=0.0.0.0 \
    RNNSERVE_METRICS_PORT=8000 \
    RNNSERVE_MODEL_REPOSITORY=/models

RUN groupadd --system --gid 10001 rnnserve \
 && useradd --system --uid 10001 --gid rnnserve --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rnnserve

COPY --from=build /opt/venv /opt/venv
# The shipped models, owned by root and read-only to the server; mount your own repository
# over /models to serve other checkpoints (docker-compose.yml does).
COPY model_repository/ /models/

# Numeric, so that runtimes checking runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /tmp

EXPOSE 50051 8000

# Healthy once the gRPC health service reports SERVING (the overall server status).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as hg; ch = grpc.insecure_channel('127.0.0.1:' + os.environ.get('RNNSERVE_PORT', '50051')); r = hg.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=4); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]

STOPSIGNAL SIGTERM
CMD ["rnnserve", "serve"]
