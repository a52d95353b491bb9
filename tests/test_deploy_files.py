"""The deploy files can't be run here (no Docker engine), so check what can be: they parse and
agree with each other and with the worker's defaults."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from worker.config import Settings
from worker.service import DRAIN_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent


def test_livekit_yaml_matches_the_worker_defaults() -> None:
    server = yaml.safe_load((ROOT / "livekit.yaml").read_text())
    assert f"ws://localhost:{server['port']}" == Settings().livekit_url
    ((key, secret),) = server["keys"].items()
    assert len(secret) >= 32  # livekit-server refuses shorter secrets
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    agent = compose["services"]["agent"]["environment"]
    assert agent["LIVEKIT_API_KEY"] == key
    assert agent["LIVEKIT_API_SECRET"] == secret
    assert agent["LIVEKIT_URL"] == f"ws://livekit:{server['port']}"
    assert f"{server['port']}:{server['port']}" in compose["services"]["livekit"]["ports"]


def test_compose_and_dockerfile_agree_on_the_health_port_and_the_drain() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    agent = compose["services"]["agent"]
    port = agent["environment"]["WORKER_PORT"]
    assert f"{port}:{port}" in agent["ports"]
    grace = int(agent["stop_grace_period"].rstrip("s"))
    assert grace > DRAIN_TIMEOUT  # `start` drains running calls for up to this long on SIGTERM
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile
    assert 'CMD ["python", "-m", "worker", "start"]' in dockerfile
    assert "download-files" in dockerfile
    assert dockerfile.count("FROM ") >= 2  # multi-stage
