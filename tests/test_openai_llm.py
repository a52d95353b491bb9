"""plugins.openai_llm through the real openai SDK against the loopback OpenAI server."""

from __future__ import annotations

import asyncio
import base64
import enum
import inspect
import io
import logging
import subprocess
import sys
import wave
from pathlib import Path
from typing import Annotated

import numpy as np
import openai
import pytest
from livekit import rtc
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
)
from livekit.agents.llm import (
    ChatAudio,
    ChatChunk,
    ChatContext,
    ChatImage,
    ChatMessage,
    FunctionCallInfo,
    FunctionContext,
    ToolChoice,
    TypeInfo,
    ai_callable,
)
from livekit.agents.metrics import LLMMetrics
from PIL import Image

import plugins.openai_llm
from plugins.openai_llm import LLM, InvalidFunctionCall, LLMStream, build_call
from tests.loopback.openai_server import Fault, OpenAIServer, Reply, ToolCall, Usage, scripted
from tests.speech import speak

KEY = "sk-test-secret-0123456789"
CONN = APIConnectOptions(max_retry=2, retry_interval=0.0, timeout=5.0)


class Unit(enum.Enum):
    CELSIUS = "c"
    FAHRENHEIT = "f"


class Tools(FunctionContext):
    @ai_callable()
    async def get_weather(
        self,
        city: Annotated[str, TypeInfo(description="City name")],
        unit: Annotated[Unit, TypeInfo(description="Temperature unit")] = Unit.CELSIUS,
    ) -> dict[str, object]:
        """Current weather for a city."""
        return {"temp": 21, "sky": "clear"}

    @ai_callable()
    async def add(self, a: int, b: float, tags: list[str] | None = None) -> int:
        """Add two numbers."""
        return int(a + b)

    @ai_callable()
    async def fail(self, loud: bool) -> str:
        """Always fails."""
        raise RuntimeError("boom")


@pytest.fixture
async def server():
    async with OpenAIServer() as s:
        yield s


@pytest.fixture
async def make_llm(server):
    made: list[LLM] = []

    def make(**options) -> LLM:
        llm = LLM(base_url=server.base_url, api_key=KEY, **options)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        await llm.aclose()


async def collect(stream: LLMStream) -> list[ChatChunk]:
    async with stream:
        return [chunk async for chunk in stream]


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def calls_of(chunks: list[ChatChunk]) -> list[FunctionCallInfo]:
    out: list[FunctionCallInfo] = []
    for c in chunks:
        if c.choices and c.choices[0].delta.tool_calls:
            assert len(c.choices[0].delta.tool_calls) == 1
            out.extend(c.choices[0].delta.tool_calls)
    return out


def user(*content) -> ChatContext:
    return ChatContext(messages=[ChatMessage(role="user", content=list(content))])


# --- constructed like livekit-plugins-openai 0.12 ---------------------------------------------

# livekit.plugins.openai.LLM.__init__ in livekit-plugins-openai 0.12 (all keyword-only)
LIVEKIT_LLM_ARGUMENTS = {
    "model": "gpt-4o",
    "api_key": None,
    "base_url": None,
    "user": None,
    "client": None,
    "temperature": None,
    "parallel_tool_calls": None,
    "tool_choice": "auto",
    "store": None,
    "metadata": None,
}


def test_constructor_takes_livekit_plugins_openai_arguments_and_defaults():
    params = inspect.signature(LLM).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    defaults = {name: params[name].default for name in LIVEKIT_LLM_ARGUMENTS if name in params}
    assert defaults == LIVEKIT_LLM_ARGUMENTS
    assert not hasattr(plugins.openai_llm, "LLMOptions")  # the options are private


async def test_a_port_from_livekit_plugins_openai_changes_the_import_only(server):
    # What a livekit-plugins-openai 0.12 agent typically passes, word for word.
    llm = LLM(
        model="gpt-4o-mini",
        api_key=KEY,
        base_url=server.base_url,
        temperature=0.4,
        parallel_tool_calls=False,
        tool_choice="required",
        user="caller-42",
    )
    try:
        assert text_of(await collect(llm.chat(chat_ctx=user("hi"), fnc_ctx=Tools()))) == "ok"
        await collect(llm.chat(chat_ctx=user("hi")))
    finally:
        await llm.aclose()

    with_tools, without_tools = (r.body for r in server.requests)
    sent = {k: with_tools.get(k) for k in ("model", "temperature", "user")}
    assert sent == {"model": "gpt-4o-mini", "temperature": 0.4, "user": "caller-42"}
    assert with_tools["tool_choice"] == "required"
    assert with_tools["parallel_tool_calls"] is False
    assert [t["function"]["name"] for t in with_tools["tools"]] == ["add", "fail", "get_weather"]
    # as in livekit-plugins-openai: tool options only go with tools
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & without_tools.keys()
    assert without_tools["user"] == "caller-42"
    assert server.requests[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_tool_choice_defaults_and_store_metadata(server, make_llm):
    tools = Tools()
    await collect(make_llm().chat(chat_ctx=user("hi"), fnc_ctx=tools))
    await collect(make_llm(tool_choice=None).chat(chat_ctx=user("hi"), fnc_ctx=tools))
    configured = make_llm(tool_choice="none", store=True, metadata={"room": "r1"})
    await collect(configured.chat(chat_ctx=user("hi"), fnc_ctx=tools, tool_choice="required"))

    default, unset, overridden = (r.body for r in server.requests)
    assert default["tool_choice"] == "auto"
    assert not {"user", "store", "metadata", "parallel_tool_calls"} & default.keys()
    assert "tool_choice" not in unset  # None: the server's own default
    assert overridden["tool_choice"] == "required"  # chat()'s argument wins
    assert overridden["store"] is True
    assert overridden["metadata"] == {"room": "r1"}


def test_the_plain_types_load_without_the_openai_sdk():
    """worker.config validates LLM_AUDIO_INPUT against AudioInputMode before any provider is
    built: importing it must not load the openai SDK (nor livekit-agents)."""
    code = (
        "import sys, typing, worker.config\n"
        "from plugins.openai_llm import AudioInputMode\n"
        "print(typing.get_args(AudioInputMode))\n"
        "print(sorted(m for m in ('openai', 'livekit.agents', 'plugins.openai_llm.llm')"
        " if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines() == ["('auto', 'on', 'off')", "[]"]
    # the names that need the SDK load on first use
    assert plugins.openai_llm.LLM is LLM
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = plugins.openai_llm.Nothing


# --- request bodies ---------------------------------------------------------------------------


async def test_text_request_body_and_streamed_deltas(server, make_llm):
    server.responder = lambda body: Reply(text="Hello there, how are you?")
    llm = make_llm(
        model="gpt-4o-mini", temperature=0.2, max_output_tokens=50, extra_headers={"X-Trace": "t1"}
    )
    ctx = ChatContext()
    ctx.append(role="system", text="Be brief.")
    ctx.append(role="user", text="Hi!")
    ctx.append(role="assistant", text="Hello.")
    ctx.messages.append(ChatMessage(role="user", content=["part one", "part two"]))

    chunks = await collect(llm.chat(chat_ctx=ctx))

    assert text_of(chunks) == "Hello there, how are you?"
    assert [c.choices[0].delta.content for c in chunks if c.choices] == [
        "Hello",
        " there,",
        " how",
        " are",
        " you?",
    ]
    request = server.requests[0]
    assert request.body == {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "max_completion_tokens": 50,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "part one\npart two"},
        ],
    }
    assert request.headers["X-Trace"] == "t1"
    assert request.headers["Authorization"] == f"Bearer {KEY}"

    await collect(llm.chat(chat_ctx=ctx, temperature=0.9, n=2))
    assert server.requests[1].body["temperature"] == 0.9
    assert server.requests[1].body["n"] == 2


def gradient_frame(width: int, height: int) -> rtc.VideoFrame:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[:, :, 0] = x[None, :]
    rgba[:, :, 3] = 255
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, rgba.tobytes())


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))
    assert image.format == "JPEG"
    return image


async def test_camera_frame_is_a_jpeg_part_encoded_once(server, make_llm):
    llm = make_llm()
    image = ChatImage(image=gradient_frame(1280, 720), inference_detail="low")
    ctx = user("What do you see?", image)

    await collect(llm.chat(chat_ctx=ctx))
    await collect(llm.chat(chat_ctx=ctx))

    first, second = (r.body["messages"][0]["content"] for r in server.requests)
    assert first[0] == {"type": "text", "text": "What do you see?"}
    assert first[1]["type"] == "image_url"
    assert first[1]["image_url"]["detail"] == "low"
    assert decode_data_url(first[1]["image_url"]["url"]).size == (768, 432)
    assert second == first
    assert len(image._cache) == 1  # one encoding, reused by the second request


async def test_image_sizes_urls_and_default_detail(server, make_llm):
    llm = make_llm(image_detail="high")
    small = ChatImage(image=gradient_frame(320, 240))
    boxed = ChatImage(image=gradient_frame(640, 480), inference_width=200, inference_height=200)
    url = ChatImage(image="https://example.com/cat.jpg", inference_detail="low")

    await collect(llm.chat(chat_ctx=user(small, boxed, url)))

    parts = server.requests[0].body["messages"][0]["content"]
    assert decode_data_url(parts[0]["image_url"]["url"]).size == (320, 240)  # never upscaled
    assert parts[0]["image_url"]["detail"] == "high"  # the options' default for "auto"
    assert decode_data_url(parts[1]["image_url"]["url"]).size == (200, 150)
    assert parts[2] == {
        "type": "image_url",
        "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"},
    }


async def test_images_are_left_out_for_models_without_vision(server, make_llm):
    llm = make_llm(image_input=False)
    frame = ChatImage(image=gradient_frame(640, 480))
    await collect(llm.chat(chat_ctx=user("What do you see?", frame)))
    assert server.requests[0].body["messages"][0]["content"] == "What do you see?"
    assert frame._cache == {}  # not even encoded


def stereo_48k_frames(samples_16k: np.ndarray) -> list[rtc.AudioFrame]:
    mono = np.repeat(samples_16k, 3)  # crude 16 -> 48 kHz
    stereo = np.stack([mono, mono], axis=1).astype(np.int16)
    return [
        rtc.AudioFrame(
            data=stereo[i : i + 480].tobytes(),
            sample_rate=48000,
            num_channels=2,
            samples_per_channel=len(stereo[i : i + 480]),
        )
        for i in range(0, len(stereo), 480)
    ]


@pytest.mark.parametrize(
    ("model", "mode", "sends_audio"),
    [
        ("gpt-4o-audio-preview", "auto", True),
        ("gpt-audio", "auto", True),
        ("gpt-4o-mini", "auto", False),
        ("gpt-4o-mini", "on", True),
        ("gpt-audio", "off", False),
    ],
)
async def test_audio_is_one_wav_part_for_audio_models(server, make_llm, model, mode, sends_audio):
    speech = speak("hello world", 16000)
    llm = make_llm(model=model, audio_input=mode)
    ctx = user("hello world", ChatAudio(frame=stereo_48k_frames(speech)))

    await collect(llm.chat(chat_ctx=ctx))

    content = server.requests[0].body["messages"][0]["content"]
    if not sends_audio:
        assert content == "hello world"
        return
    assert content[0] == {"type": "text", "text": "hello world"}
    assert len(content) == 2
    assert content[1]["type"] == "input_audio"
    assert content[1]["input_audio"]["format"] == "wav"
    with wave.open(io.BytesIO(base64.b64decode(content[1]["input_audio"]["data"]))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert abs(w.getnframes() - len(speech)) < 0.02 * len(speech)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)
    rms_in = np.sqrt(np.mean(speech.astype(np.float64) ** 2))
    assert 0.8 * rms_in < np.sqrt(np.mean(pcm**2)) < 1.2 * rms_in


async def test_audio_only_message_is_skipped_without_audio_input(server, make_llm):
    llm = make_llm(model="gpt-4o-mini")
    ctx = ChatContext().append(role="system", text="sys")
    ctx.messages.append(ChatMessage(role="user", content=[ChatAudio(frame=[])]))
    ctx.append(role="user", text="typed")

    await collect(llm.chat(chat_ctx=ctx))

    assert server.requests[0].body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "typed"},
    ]


async def test_tools_schema_tool_choice_and_tool_history(server, make_llm):
    llm = make_llm()
    tools = Tools()
    calls = [
        build_call(tools, "call_w", "get_weather", '{"city": "Paris"}'),
        build_call(tools, "call_a", "add", '{"a": 2, "b": 3}'),
        build_call(tools, "call_f", "fail", '{"loud": true}'),
    ]
    called = [c.execute() for c in calls]
    await asyncio.gather(*(c.task for c in called), return_exceptions=True)
    ctx = ChatContext().append(role="user", text="weather?")
    ctx.messages.append(ChatMessage.create_tool_calls(calls))
    ctx.messages.extend(ChatMessage.create_tool_from_called_function(c) for c in called)

    await collect(
        llm.chat(
            chat_ctx=ctx,
            fnc_ctx=tools,
            tool_choice=ToolChoice(type="function", name="get_weather"),
            parallel_tool_calls=False,
        )
    )

    body = server.requests[0].body
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two numbers.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "a": {"type": "integer"},
                        "b": {"type": "number"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["a", "b"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "fail",
                "description": "Always fails.",
                "parameters": {
                    "type": "object",
                    "properties": {"loud": {"type": "boolean"}},
                    "required": ["loud"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "City name"},
                        "unit": {
                            "type": "string",
                            "description": "Temperature unit",
                            "enum": ["c", "f"],
                        },
                    },
                    "required": ["city"],
                },
            },
        },
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_w",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                },
                {
                    "id": "call_f",
                    "type": "function",
                    "function": {"name": "fail", "arguments": '{"loud": true}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_w", "content": '{"temp": 21, "sky": "clear"}'},
        {"role": "tool", "tool_call_id": "call_a", "content": "5"},
        {"role": "tool", "tool_call_id": "call_f", "content": "Error: boom"},
    ]

    await collect(llm.chat(chat_ctx=ctx, tool_choice="required", parallel_tool_calls=True))
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & server.requests[1].body.keys()


# --- streamed tool calls ----------------------------------------------------------------------


@pytest.mark.parametrize("interleave", [False, True])
async def test_split_and_interleaved_tool_calls_are_assembled(server, make_llm, interleave):
    server.responder = lambda body: Reply(
        text="Let me check.",
        tool_calls=[
            ToolCall("get_weather", '{"city": "Paris", "unit": "f"}', id="call_w", parts=5),
            ToolCall("add", '{"a": 2, "b": 3.5}', id="call_a", parts=5),
        ],
        interleave=interleave,
    )
    stream = make_llm().chat(chat_ctx=user("hi"), fnc_ctx=Tools())
    chunks = await collect(stream)

    assert text_of(chunks) == "Let me check."
    calls = calls_of(chunks)
    assert calls == stream.function_calls
    by_id = {c.tool_call_id: c for c in calls}
    assert by_id.keys() == {"call_w", "call_a"}
    assert by_id["call_w"].function_info.name == "get_weather"
    assert by_id["call_w"].arguments == {"city": "Paris", "unit": "f"}
    assert by_id["call_a"].arguments == {"a": 2, "b": 3.5}
    results = await asyncio.gather(*(c.execute().task for c in calls))
    assert sorted(map(str, results)) == ["5", "{'temp': 21, 'sky': 'clear'}"]


async def test_each_call_is_handed_out_as_soon_as_its_arguments_are_complete(server, make_llm):
    server.responder = lambda body: Reply(
        tool_calls=[
            ToolCall("get_weather", '{"city": "Paris"}', parts=2),
            ToolCall("add", '{"a": 1, "b": 2}', parts=16),
        ],
        tokens_per_second=20,
    )
    stream = make_llm().chat(chat_ctx=user("hi"), fnc_ctx=Tools())
    async with stream:
        seen: list[tuple[str, bool, int]] = []
        async for chunk in stream:
            for call in calls_of([chunk]):
                request = server.requests[0]
                seen.append((call.function_info.name, request.done.is_set(), request.deltas_sent))

    assert [name for name, _, _ in seen] == ["get_weather", "add"]
    _, server_done, deltas_sent = seen[0]
    assert not server_done
    assert deltas_sent < 18  # call 1 was still streaming when call 0 reached the consumer


async def test_interleaved_calls_are_handed_out_in_completion_order(server, make_llm):
    server.responder = lambda body: Reply(
        tool_calls=[
            ToolCall("get_weather", '{"city": "Paris"}', id="long", parts=6),
            ToolCall("add", '{"a": 1, "b": 2}', id="short", parts=2),
        ],
        interleave=True,
    )
    stream = make_llm().chat(chat_ctx=user("hi"), fnc_ctx=Tools())
    chunks = await collect(stream)
    assert [c.tool_call_id for c in calls_of(chunks)] == ["short", "long"]


async def test_argument_errors_become_tool_results_for_the_model(server, make_llm):
    server.responder = lambda body: Reply(
        tool_calls=[
            ToolCall("get_wether", '{"city": "Paris"}', id="unknown"),
            ToolCall("get_weather", '{"city": "Paris"', id="bad_json", parts=3),
            ToolCall("get_weather", "{}", id="missing"),
            ToolCall("get_weather", '{"city": "Paris", "unit": "kelvin"}', id="enum"),
            ToolCall("add", '{"a": "two", "b": 1}', id="type"),
            ToolCall("get_weather", '{"city": "Rome"}', id="good"),
        ]
    )
    llm = make_llm()
    tools = Tools()
    stream = llm.chat(chat_ctx=user("hi"), fnc_ctx=tools)
    chunks = await collect(stream)  # no exception: the turn goes on

    calls = {c.tool_call_id: c for c in calls_of(chunks)}
    assert len(calls) == 6
    assert not isinstance(calls["good"], InvalidFunctionCall)
    assert all(isinstance(calls[i], InvalidFunctionCall) for i in calls if i != "good")
    called = [c.execute() for c in calls.values()]
    await asyncio.gather(*(c.task for c in called))
    results = {c.call_info.tool_call_id: str(c.result) for c in called}
    assert "no function named 'get_wether'" in results["unknown"]
    assert "available: add, fail, get_weather" in results["unknown"]
    assert "invalid JSON" in results["bad_json"]
    assert "missing required argument city" in results["missing"]
    assert "kelvin" in results["enum"]
    assert "expected number" in results["type"]
    assert all(r.startswith("Error: ") for i, r in results.items() if i != "good")

    # The next request tells the model what was wrong, with a history servers accept.
    ctx = user("hi")
    ctx.messages.append(ChatMessage.create_tool_calls(list(calls.values())))
    ctx.messages.extend(ChatMessage.create_tool_from_called_function(c) for c in called)
    await collect(llm.chat(chat_ctx=ctx, fnc_ctx=tools))
    sent = server.requests[1].body["messages"]
    arguments = {c["id"]: c["function"]["arguments"] for c in sent[1]["tool_calls"]}
    assert arguments["bad_json"] == "{}"
    assert arguments["enum"] == '{"city": "Paris", "unit": "kelvin"}'
    tool_results = {m["tool_call_id"]: m["content"] for m in sent[2:]}
    assert tool_results.pop("good") == '{"temp": 21, "sky": "clear"}'
    assert tool_results == {i: r for i, r in results.items() if i != "good"}
    names = {c["id"]: c["function"]["name"] for c in sent[1]["tool_calls"]}
    assert names["unknown"] == "get_wether"


# --- usage and metrics ------------------------------------------------------------------------


async def test_usage_becomes_llm_metrics(server, make_llm):
    server.responder = lambda body: Reply(
        text="Hi there.", usage=Usage(prompt_tokens=42, completion_tokens=3, cached_tokens=10)
    )
    llm = make_llm()
    metrics: list[LLMMetrics] = []
    llm.on("metrics_collected", metrics.append)

    chunks = await collect(llm.chat(chat_ctx=user("hi")))

    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (42, 3, 45)
    assert usage.cache_read_input_tokens == 10
    assert len(metrics) == 1
    m = metrics[0]
    assert (m.prompt_tokens, m.completion_tokens, m.total_tokens) == (42, 3, 45)
    assert m.request_id == "chatcmpl-loopback-0"
    assert m.ttft > 0
    assert m.duration >= m.ttft
    assert not m.cancelled
    assert m.label == "plugins.openai_llm.llm.LLM"


# --- errors and retries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "conn_timeout", "attempts", "cause_type", "status"),
    [
        (Fault(503, "overloaded"), 5.0, 3, APIStatusError, 503),
        (Fault(500, "internal"), 5.0, 3, APIStatusError, 500),
        (Fault(429, "slow down"), 5.0, 3, APIStatusError, 429),
        (Fault(408, "request timeout"), 5.0, 3, APIStatusError, 408),
        (Fault(409, "conflict"), 5.0, 3, APIStatusError, 409),
        (Fault(status=None), 5.0, 3, APIConnectionError, None),  # dropped before headers
        (Reply(text="never seen", drop_after=0), 5.0, 3, APIConnectionError, None),
        (Reply(text="never seen", truncate_after=0), 5.0, 3, APIConnectionError, None),
        (Fault(stall=30.0), 0.5, 3, APITimeoutError, None),
    ],
)
async def test_retryable_errors_are_retried_before_output(
    server, make_llm, caplog, answer, conn_timeout, attempts, cause_type, status
):
    server.responder = lambda body: answer
    conn = APIConnectOptions(max_retry=2, retry_interval=0.0, timeout=conn_timeout)
    stream = make_llm().chat(chat_ctx=user("hi"), conn_options=conn)

    with (
        caplog.at_level(logging.WARNING, logger="livekit.agents"),
        pytest.raises(APIConnectionError) as raised,
    ):
        await collect(stream)

    assert "after 3 attempts" in str(raised.value)
    assert len(server.requests) == attempts
    # The base class logs each retried error (its stream re-raises the final one `from None`).
    retried = [r.exc_info[1] for r in caplog.records if r.exc_info and "retrying" in r.message]
    assert len(retried) == attempts - 1
    for cause in retried:
        assert type(cause) is cause_type
        assert isinstance(cause, APIError)
        assert cause.retryable
        if status is not None:
            assert isinstance(cause, APIStatusError)
            assert cause.status_code == status
            assert cause.message == answer.message  # the server's own words
    assert not stream.function_calls


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_other_client_errors_are_final(server, make_llm, status):
    server.responder = lambda body: Fault(status, f"nope {status}")
    with pytest.raises(APIStatusError) as raised:
        await collect(make_llm().chat(chat_ctx=user("hi"), conn_options=CONN))
    assert raised.value.status_code == status
    assert not raised.value.retryable
    assert raised.value.message == f"nope {status}"
    assert len(server.requests) == 1


async def test_api_key_never_in_errors(server, make_llm):
    server.responder = lambda body: Fault(401, f"Incorrect API key provided: {KEY}.")
    with pytest.raises(APIStatusError) as raised:
        await collect(make_llm().chat(chat_ctx=user("hi"), conn_options=CONN))
    err = raised.value
    assert err.message == "Incorrect API key provided: ***."
    assert KEY not in str(err)
    assert KEY not in repr(err.body)


@pytest.mark.parametrize(
    ("reply", "conn_timeout", "error_type"),
    [
        (Reply(text="one two three four five", drop_after=2), 5.0, APIConnectionError),
        (Reply(text="one two three four five", truncate_after=2), 5.0, APIConnectionError),
        (Reply(text="one two three four five", stall_after=2), 0.5, APITimeoutError),
    ],
)
async def test_errors_after_output_started_are_final(
    server, make_llm, reply, conn_timeout, error_type
):
    server.responder = lambda body: reply
    conn = APIConnectOptions(max_retry=3, retry_interval=0.0, timeout=conn_timeout)
    stream = make_llm().chat(chat_ctx=user("hi"), conn_options=conn)
    received: list[str] = []

    async def read() -> None:
        async with stream:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(APIError) as raised:
        await read()

    assert type(raised.value) is error_type
    assert not raised.value.retryable
    assert "".join(received) == "one two"  # nothing duplicated
    assert len(server.requests) == 1


async def test_retries_then_streams_with_the_same_request(server, make_llm):
    server.responder = scripted(Fault(503), Fault(429), Reply(text="made it"))
    image = ChatImage(image=gradient_frame(64, 48))
    chunks = await collect(make_llm().chat(chat_ctx=user("x", image), conn_options=CONN))
    assert text_of(chunks) == "made it"
    bodies = [r.body for r in server.requests]
    assert len(bodies) == 3
    assert bodies[0] == bodies[1] == bodies[2]


# --- cancellation and closing -----------------------------------------------------------------


async def test_cancel_mid_stream_closes_the_response(server, make_llm):
    server.responder = lambda body: Reply(text="word " * 200, tokens_per_second=50)
    llm = make_llm()
    metrics: list[LLMMetrics] = []
    llm.on("metrics_collected", metrics.append)
    stream = llm.chat(chat_ctx=user("hi"))
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    await stream.aclose()

    request = server.requests[0]
    async with asyncio.timeout(10):
        await request.done.wait()
    assert request.client_disconnected
    assert request.deltas_sent < 200
    assert len(metrics) == 1
    assert metrics[0].cancelled


async def test_llm_aclose_closes_its_client_and_open_streams(server):
    server.responder = lambda body: Reply(text="word " * 200, tokens_per_second=50)
    llm = LLM(base_url=server.base_url, api_key=KEY)
    stream = llm.chat(chat_ctx=user("hi"))
    await stream.__anext__()

    await llm.aclose()

    assert llm._client.is_closed()
    async with asyncio.timeout(10):
        await server.requests[0].done.wait()
    assert server.requests[0].client_disconnected


async def test_a_given_client_is_left_open(server):
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    llm = LLM(model="m", client=client)
    chunks = await collect(llm.chat(chat_ctx=user("hi")))
    await llm.aclose()
    assert text_of(chunks) == "ok"
    assert not client.is_closed()
    await client.close()


def test_missing_api_key_is_an_error_only_for_openai_itself(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        LLM()


async def test_local_server_needs_no_api_key(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    llm = LLM(base_url=server.base_url)
    try:
        assert text_of(await collect(llm.chat(chat_ctx=user("hi")))) == "ok"
    finally:
        await llm.aclose()
