"""The scripted providers in a process of their own, for the multi-process parts.

In production the providers are remote: their work must not count as the sessions' CPU or
memory. ``python -m bench.provider_proc '<json ProviderScript + reply>'`` starts a loopback
OpenAI server and a loopback Deepgram server, prints one JSON line with their URLs, and
serves until its stdin closes. Records are dropped every few seconds (long runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from .harness import LoopbackProviders, ProviderScript


@dataclass(frozen=True)
class ProviderProcessConfig:
    script: ProviderScript
    reply: str
    transcript: str = "Tell me more about that."

    def to_json(self) -> str:
        return json.dumps(
            {
                "script": self.script.__dict__,
                "reply": self.reply,
                "transcript": self.transcript,
            }
        )

    @staticmethod
    def from_json(text: str) -> ProviderProcessConfig:
        data = json.loads(text)
        return ProviderProcessConfig(
            script=ProviderScript(**data["script"]),
            reply=data["reply"],
            transcript=data["transcript"],
        )


async def _serve(cfg: ProviderProcessConfig) -> None:
    providers = LoopbackProviders(cfg.script)
    providers.reply_for = lambda body: providers.reply(cfg.reply)
    providers.dg.listen.default_transcript = cfg.transcript
    await providers.start()
    print(json.dumps({"pid": os.getpid(), **providers.env()}), flush=True)

    async def forget() -> None:
        while True:
            await asyncio.sleep(5.0)
            providers.clear_records()

    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096) and not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    task = asyncio.create_task(forget())
    try:
        await stdin_closed
    finally:
        loop.remove_reader(sys.stdin.fileno())
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await providers.aclose()


def main() -> None:
    asyncio.run(_serve(ProviderProcessConfig.from_json(sys.argv[1])))


class ProviderProcess:
    """Starts and stops ``python -m bench.provider_proc`` (async context manager)."""

    def __init__(self, cfg: ProviderProcessConfig) -> None:
        self._cfg = cfg
        self._proc: asyncio.subprocess.Process | None = None
        # the servers log every client that goes away mid-answer: keep that out of the report
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __aexit__)
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    @property
    def env(self) -> dict[str, str]:
        return {k: v for k, v in self.info.items() if k != "pid"}

    async def __aenter__(self) -> ProviderProcess:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.provider_proc",
            self._cfg.to_json(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
        )
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 60)
        if not line:
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"the provider process did not start: {tail}")
        self.info = json.loads(line)
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            self._stderr.close()
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        self._stderr.close()


if __name__ == "__main__":
    main()
