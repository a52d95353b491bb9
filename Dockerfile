# syntax=docker/dockerfile:1
# Multi-stage: build the virtualenv with compilers, ship it on a slim base as a non-root user.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PIP_NO_CACHE_DIR=1
RUN python -m venv $VIRTUAL_ENV
ENV PATH="$VIRTUAL_ENV/bin:$PATH"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY plugins ./plugins
COPY bench ./bench
RUN pip install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 agent
ENV VIRTUAL_ENV=/opt/venv PATH="/opt/venv/bin:$PATH" PYTHONUNBUFFERED=1 WORKER_PORT=8081
COPY --from=build /opt/venv /opt/venv
USER agent
WORKDIR /home/agent
# Fetch whatever the plugins need at build time, never at run time.
RUN python -m worker download-files
EXPOSE 8081
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('WORKER_PORT','8081'), timeout=2)"
# SIGTERM drains running jobs (up to --drain-timeout, 60 s): set your orchestrator's grace period above it.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "worker", "start"]
