"""The deploy files can't be run here (no Docker engine), so check what can be: they parse and
agree with each other, with the worker's defaults and with what the image installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts import lock
from tests.deploy_files import (
    COMPOSE,
    COMPOSE_LOCAL,
    DOCKERFILE,
    MissingVariableError,
    command_text,
    compose_config,
    dockerfile_arg_default,
    dockerignore_excludes,
    host_ip,
    lock_files,
    pinned,
    service_env,
    uninstalled,
)
from worker.config import Need, Settings, load_settings
from worker.service import DRAIN_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent


def test_livekit_yaml_matches_the_worker_defaults() -> None:
    server = yaml.safe_load((ROOT / "livekit.yaml").read_text())
    assert f"ws://localhost:{server['port']}" == Settings().livekit_url
    ((key, secret),) = server["keys"].items()
    assert len(secret) >= 32  # livekit-server refuses shorter secrets
    compose = compose_config(COMPOSE, env=USER_ENV)
    for name in ("agent", "web"):
        env = compose["services"][name]["environment"]
        assert env["LIVEKIT_API_KEY"] == key
        assert env["LIVEKIT_API_SECRET"] == secret
    assert (
        compose["services"]["agent"]["environment"]["LIVEKIT_URL"]
        == f"ws://livekit:{server['port']}"
    )
    port = server["port"]
    assert f"127.0.0.1:{port}:{port}" in compose["services"]["livekit"]["ports"]


def test_compose_and_dockerfile_agree_on_the_health_port_and_the_drain() -> None:
    compose = compose_config(COMPOSE, env=USER_ENV)
    agent = compose["services"]["agent"]
    port = agent["environment"]["WORKER_PORT"]
    assert f"127.0.0.1:{port}:{port}" in agent["ports"]
    grace = int(agent["stop_grace_period"].rstrip("s"))
    assert grace > DRAIN_TIMEOUT  # `start` drains running calls for up to this long on SIGTERM
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile
    assert 'CMD ["python", "-m", "worker", "start"]' in dockerfile
    assert "download-files" in dockerfile
    assert dockerfile.count("FROM ") >= 2  # multi-stage


# --- issue 19: the image installs what its configuration selects, and nothing is open -------

USER_ENV = {"WEB_ACCESS_TOKEN": "a-local-web-token-0123456789"}
"""What a user's .env must hold for compose (no cloud key: the web client's access token)."""

CONFIGS = {
    "cloud": (COMPOSE,),
    "local": (COMPOSE, COMPOSE_LOCAL),
}


def built_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services running this project's image (every one of them builds it)."""
    return {name: s for name, s in config["services"].items() if "build" in s}


def image_extras(service: dict[str, Any]) -> str:
    args = service["build"].get("args") or {}
    return str(args.get("EXTRAS", dockerfile_arg_default("EXTRAS")))


@pytest.mark.parametrize("variant", CONFIGS)
def test_every_selected_provider_is_installed_by_the_image_that_runs_it(variant: str) -> None:
    config = compose_config(*CONFIGS[variant], env=USER_ENV)
    services = built_services(config)
    assert {"agent", "web"} <= set(services)
    for name, service in services.items():
        missing = uninstalled(service_env(service), command_text(service), image_extras(service))
        assert missing == [], (variant, name)
        # One tag per flavour: two flavours never overwrite each other's image.
        assert service["image"].endswith(f":{image_extras(service) or 'cloud'}"), name


def test_the_check_catches_a_local_provider_on_the_cloud_image() -> None:
    # The bug: STT_PROVIDER=whisper with an image that has no local extra.
    env = {"STT_PROVIDER": "whisper", "TTS_PROVIDER": "piper"}
    assert len(uninstalled(env, "python -m worker start", "")) == 4
    assert uninstalled(env, "python -m worker start", "local") == []
    assert uninstalled({}, "python -m llama_cpp.server --model m", "") != []


def test_the_local_variant_runs_offline_without_cloud_keys() -> None:
    config = compose_config(COMPOSE, COMPOSE_LOCAL, env=USER_ENV)
    agent = config["services"]["agent"]
    env = service_env(agent)
    # The worker's own start-up validation passes with no key but the LiveKit pair.
    settings = load_settings(env, needs=(Need.LIVEKIT_SERVER, Need.CLOUD_PROVIDERS))
    assert (settings.stt_provider, settings.tts_provider) == ("whisper", "piper")
    assert not settings.deepgram_api_key
    assert not settings.openai_api_key
    llm = config["services"]["llm"]
    assert urlparse(settings.openai_base_url).hostname == "llm"
    assert str(urlparse(settings.openai_base_url).port) in llm["expose"]
    assert "--host 0.0.0.0 --port 8000" in command_text(llm)
    assert "llm" in agent["depends_on"]


@pytest.mark.parametrize("variant", CONFIGS)
def test_ports_are_published_on_loopback_unless_the_user_opts_in(variant: str) -> None:
    for env, expected in (
        (USER_ENV, "127.0.0.1"),
        ({**USER_ENV, "BIND_ADDRESS": "0.0.0.0"}, "0.0.0.0"),
    ):
        config = compose_config(*CONFIGS[variant], env=env)
        published = [p for s in config["services"].values() for p in s.get("ports", [])]
        assert published
        assert {host_ip(p) for p in published} == {expected}, published


@pytest.mark.parametrize("variant", CONFIGS)
def test_every_service_restarts_and_every_image_is_pinned(variant: str) -> None:
    config = compose_config(*CONFIGS[variant], env=USER_ENV)
    for name, service in config["services"].items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        if "build" not in service:  # pulled: an exact release, never a moving tag
            assert re.search(r":v?\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?$", service["image"]), name
    base = dockerfile_arg_default("PYTHON_IMAGE")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base)
    assert (ROOT / "Dockerfile").read_text().count("FROM ${PYTHON_IMAGE}") == 2


def test_the_web_client_needs_its_access_token_off_loopback() -> None:
    # The web server listens on every interface of its container, which it refuses to do
    # without WEB_ACCESS_TOKEN: compose says so at `up` instead of a restart loop.
    with pytest.raises(MissingVariableError, match="WEB_ACCESS_TOKEN"):
        compose_config(COMPOSE)
    web = compose_config(COMPOSE, env=USER_ENV)["services"]["web"]
    env = service_env(web)
    assert env["WEB_ACCESS_TOKEN"] == USER_ENV["WEB_ACCESS_TOKEN"]
    assert "--host 0.0.0.0" in command_text(web)
    load_settings(env)  # the web command's own validation of its environment passes


def test_the_web_client_and_the_metrics_port_are_served() -> None:
    config = compose_config(COMPOSE, env=USER_ENV)
    web = config["services"]["web"]
    assert "worker web" in command_text(web)
    web_port = re.search(r"--port (\d+)", command_text(web))
    assert web_port
    assert f"127.0.0.1:{web_port[1]}:{web_port[1]}" in web["ports"]
    # The page runs in the browser: it must be told the server's address as the host sees it.
    assert urlparse(service_env(web)["LIVEKIT_URL"]).hostname in ("localhost", "127.0.0.1")
    agent = config["services"]["agent"]
    metrics = service_env(agent)["PROMETHEUS_PORT"]
    assert f"127.0.0.1:{metrics}:{metrics}" in agent["ports"]
    assert re.search(rf"^EXPOSE .*\b{metrics}\b", DOCKERFILE.read_text(), re.M)


def test_the_build_context_has_no_secrets_and_everything_the_build_copies() -> None:
    never = (".env", ".env.local", "worker/.env", ".venv/bin/python", ".git/config",
             "artifacts/x.png", "tests/test_cli.py", "worker/__pycache__/cli.pyc")  # fmt: skip
    for private in never:
        assert dockerignore_excludes(private), private
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M)
    sources = [src for line in copied for src in line.split()]
    assert set(sources) == {"requirements", "pyproject.toml", "README.md", "worker", "plugins"}
    for source in sources:
        assert not dockerignore_excludes(source), source
        assert not dockerignore_excludes(f"{source}/x.py"), source


# --- the lock files -------------------------------------------------------------------------


def _requirements(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(r) for r in deps]


@pytest.mark.parametrize(("extras", "groups"), [("", [None]), ("local", [None, "local"])])
def test_each_lock_pins_every_dependency_within_pyprojects_bounds(
    extras: str, groups: list[str | None]
) -> None:
    pins = pinned(lock_files(extras))
    for group in groups:
        for req in _requirements(group):
            name = canonicalize_name(req.name)
            assert name in pins, (extras, req)
            assert req.specifier.contains(pins[name], prereleases=True), (extras, req, pins[name])
    text = "".join(path.read_text() for path in lock_files(extras))
    for line in text.splitlines():  # every pin carries its hashes (pip --require-hashes)
        if re.match(r"^[A-Za-z0-9]", line):
            assert line.rstrip().endswith("\\"), line


def test_the_lock_files_match_pyproject_and_an_edit_makes_them_stale(tmp_path: Path) -> None:
    assert lock.stale() == []  # what .ci/run checks, offline
    edited = tmp_path / "pyproject.toml"
    edited.write_text((ROOT / "pyproject.toml").read_text().replace('"numpy>=1.26"', '"numpy"'))
    for entry in lock.LOCKS:
        changed = lock.inputs_hash(entry, edited) != lock.recorded_hash(entry)
        assert changed == (not entry.no_deps), entry.name  # the no-deps lock has no pyproject input
