"""What prewarm loads so a job's first reply does not: checked in a fresh interpreter, since
this one has imported everything long ago."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.project_env import clean_environ

ROOT = Path(__file__).resolve().parent.parent

FIRST_REQUEST = """
import asyncio, json, sys

import worker.entrypoint
from livekit.agents import llm
from plugins.openai_llm import LLM
from tests.loopback.openai_server import OpenAIServer, Reply

worker.entrypoint.import_lazy_modules()


async def main() -> None:
    async with OpenAIServer(lambda body: Reply(text="hello back")) as server:
        model = LLM(model="m", base_url=server.base_url, api_key="sk-test")
        before = set(sys.modules)
        text = ""
        async with model.chat(chat_ctx=llm.ChatContext().append(role="user", text="hi")) as s:
            async for chunk in s:
                text += "".join(c.delta.content or "" for c in chunk.choices)
        new = sorted(set(sys.modules) - before)
        await model.aclose()
    print(json.dumps({"text": text, "imported_by_first_request": new}))


asyncio.run(main())
"""


def test_first_llm_request_after_prewarm_imports_nothing() -> None:
    """The openai SDK imports its chat resource (and jiter, its streaming helpers) on the first
    request: ~20 ms of a stalled event loop at the job's first reply unless prewarm did it."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_REQUEST],
        cwd=ROOT,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["text"] == "hello back"  # the request really went through the SDK
    assert result["imported_by_first_request"] == []
