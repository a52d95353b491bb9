"""worker.tools.builtin through the tool runner and the real LLM plugin (loopback OpenAI
server), and worker.tools.loading on real modules in a temporary package."""

from __future__ import annotations

import base64
import io
import json
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions
from livekit.agents.llm import ChatContext, ChatImage, FunctionContext
from PIL import Image

from plugins.openai_llm import LLM
from tests.loopback.openai_server import OpenAIServer, Reply, ToolCall, scripted
from worker.tools.builtin import BuiltinTools
from worker.tools.loading import ToolLoadError, load_user_tools, merge_tools
from worker.tools.runner import ToolRunningLLM, ToolRunningLLMOptions

CONN = APIConnectOptions(max_retry=0, retry_interval=0.0, timeout=10.0)

pytestmark = pytest.mark.timeout(30)


class Session:
    """What the session hands the built-in tools: camera images and an end-call switch."""

    def __init__(self, images: list[ChatImage]) -> None:
        self.images = images
        self.looks = 0
        self.end_calls = 0

    async def look(self) -> list[ChatImage]:
        self.looks += 1
        return self.images

    def end_call(self) -> None:
        self.end_calls += 1


def camera_frame(width: int = 64, height: int = 48) -> rtc.VideoFrame:
    data = bytes([200, 30, 30, 255]) * (width * height)  # a red RGBA frame
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, data)


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as s:
        yield s


async def run_reply(
    server: OpenAIServer, tools: FunctionContext, calls: list[ToolCall], answer: str = "Okay."
) -> str:
    """One reply whose first round makes `calls`; returns the text the consumer got."""
    server.responder = scripted(Reply(tool_calls=calls), Reply(text=answer))
    runner = ToolRunningLLM(
        LLM(model="loopback", base_url=server.base_url, api_key="sk-test"),
        ToolRunningLLMOptions(),
    )
    ctx = ChatContext().append(role="system", text="Be brief.").append(role="user", text="Go.")
    text = ""
    async with runner.chat(chat_ctx=ctx, fnc_ctx=tools, conn_options=CONN) as stream:
        async for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
    await runner.aclose()
    return text


def tool_results(server: OpenAIServer, request: int = 1) -> dict[str, Any]:
    messages = server.requests[request].body["messages"]
    return {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}


# --- built-in tools --------------------------------------------------------------------------


def test_builtin_tools_are_offered_with_their_schema() -> None:
    tools = BuiltinTools(look=Session([]).look, end_call=Session([]).end_call)
    assert set(tools.ai_functions) == {"current_time", "look_at_camera", "end_call"}
    assert tools.ai_functions["current_time"].arguments["timezone"].default == "UTC"


async def test_current_time_with_a_valid_and_invalid_time_zones(server: OpenAIServer) -> None:
    session = Session([])
    tools = BuiltinTools(look=session.look, end_call=session.end_call)
    before = datetime.now(ZoneInfo("Europe/Paris"))
    await run_reply(
        server,
        tools,
        [
            ToolCall("current_time", json.dumps({"timezone": "Europe/Paris"}), id="paris"),
            ToolCall("current_time", "{}", id="default"),
            ToolCall("current_time", json.dumps({"timezone": "Mars/Olympus"}), id="mars"),
            ToolCall("current_time", json.dumps({"timezone": "Europe"}), id="dir"),
            ToolCall("current_time", json.dumps({"timezone": "../etc/passwd"}), id="path"),
            ToolCall("current_time", json.dumps({"timezone": "a" * 300}), id="long"),
        ],
    )
    after = datetime.now(ZoneInfo("Europe/Paris"))
    results = tool_results(server)
    fmt = "%A %d %B %Y, %H:%M (Europe/Paris)"
    assert results["paris"] in {before.strftime(fmt), after.strftime(fmt)}
    assert results["default"].endswith("(UTC)")
    assert results["mars"] == (
        "unknown time zone 'Mars/Olympus'; use an IANA name like Europe/Paris"
    )
    # a directory of the zone database, a path, a name too long for the file system
    assert results["dir"].startswith("unknown time zone 'Europe'")
    assert results["path"].startswith("unknown time zone '../etc/passwd'")
    assert results["long"] == (
        f"unknown time zone {'a' * 64!r}; use an IANA name like Europe/Paris"
    )


async def test_look_at_camera_images_reach_the_next_request_as_a_user_image_part(
    server: OpenAIServer,
) -> None:
    session = Session([ChatImage(image=camera_frame(), inference_detail="low")])
    tools = BuiltinTools(look=session.look, end_call=session.end_call)
    text = await run_reply(
        server, tools, [ToolCall("look_at_camera", "{}", id="look")], "I see red."
    )
    assert text == "I see red."
    assert session.looks == 1

    messages = server.requests[1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[3] == {
        "role": "tool",
        "tool_call_id": "look",
        "content": "Here is what the camera shows now (1 image).",
    }
    text_part, image_part = messages[4]["content"]
    assert text_part == {"type": "text", "text": "(what the tools showed)"}
    assert image_part["type"] == "image_url"
    assert image_part["image_url"]["detail"] == "low"
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.format == "JPEG"
    assert image.size == (64, 48)
    pixel = image.convert("RGB").getpixel((32, 24))
    assert isinstance(pixel, tuple)
    red, green, _ = pixel
    assert red > 150 > green  # the camera's frame, not some other image


async def test_look_at_camera_without_a_camera_says_so_and_adds_no_image(
    server: OpenAIServer,
) -> None:
    session = Session([])
    tools = BuiltinTools(look=session.look, end_call=session.end_call)
    await run_reply(server, tools, [ToolCall("look_at_camera", "{}", id="look")])
    messages = server.requests[1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[3]["content"] == "No camera or screen share is available right now."


async def test_end_call_calls_its_callback_and_asks_for_a_goodbye(server: OpenAIServer) -> None:
    session = Session([])
    tools = BuiltinTools(look=session.look, end_call=session.end_call)
    text = await run_reply(server, tools, [ToolCall("end_call", "{}", id="bye")], "Goodbye!")
    assert session.end_calls == 1
    assert text == "Goodbye!"
    assert tool_results(server) == {
        "bye": "The call will end after your goodbye; say a short goodbye now."
    }


# --- AGENT_TOOLS loading ---------------------------------------------------------------------


@pytest.fixture
def tool_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """A fresh package (unique name per test) on sys.path; returns (name, write(module, src))."""
    name = f"usertools_{request.node.name.replace('[', '_').replace(']', '_')}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(module: str, source: str) -> str:
        (package / f"{module}.py").write_text(textwrap.dedent(source))
        return f"{name}.{module}"

    yield name, write
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


USER_TOOLS = """
    from typing import Annotated
    from livekit.agents import llm

    class Shop(llm.FunctionContext):
        @llm.ai_callable()
        async def price(self, item: Annotated[str, llm.TypeInfo(description="An item")]) -> str:
            \"\"\"The price of an item.\"\"\"
            return f"{item} costs 3 euros"

    class NotTools:
        pass

    def make_tools():
        return Shop()
"""


async def test_agent_tools_loads_a_function_context_subclass_that_then_runs(
    tool_package: Any, server: OpenAIServer
) -> None:
    _, write = tool_package
    module = write("shop", USER_TOOLS)
    tools = load_user_tools(f"{module}:Shop")
    assert isinstance(tools, FunctionContext)
    assert list(tools.ai_functions) == ["price"]

    session = Session([])
    merged = merge_tools(BuiltinTools(look=session.look, end_call=session.end_call), tools)
    assert set(merged.ai_functions) == {"current_time", "look_at_camera", "end_call", "price"}
    await run_reply(
        server, merged, [ToolCall("price", json.dumps({"item": "bread"}), id="p")], "Three."
    )
    assert [t["function"]["name"] for t in server.requests[0].body["tools"]] == list(
        merged.ai_functions
    )
    assert tool_results(server) == {"p": "bread costs 3 euros"}


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("NotTools", "is not a FunctionContext subclass"),
        ("make_tools", "is not a FunctionContext subclass"),
        ("Missing", "is not a FunctionContext subclass"),
    ],
)
def test_agent_tools_that_is_not_a_function_context_is_refused(
    tool_package: Any, target: str, error: str
) -> None:
    _, write = tool_package
    module = write("shop", USER_TOOLS)
    with pytest.raises(ToolLoadError, match=error) as info:
        load_user_tools(f"{module}:{target}")
    assert str(info.value).startswith("AGENT_TOOLS: ")


def test_agent_tools_import_errors_are_reported(tool_package: Any) -> None:
    name, write = tool_package
    broken = write("broken", "import a_module_that_does_not_exist\n")
    with pytest.raises(
        ToolLoadError, match=r"cannot import .*broken.*a_module_that_does_not_exist"
    ):
        load_user_tools(f"{broken}:Tools")
    with pytest.raises(ToolLoadError, match="cannot import"):
        load_user_tools(f"{name}.nowhere:Tools")
    syntax = write("syntax", "def (:\n")
    with pytest.raises(ToolLoadError, match="cannot import"):
        load_user_tools(f"{syntax}:Tools")


def test_agent_tools_spec_without_a_class_or_with_a_bad_tool_is_refused(tool_package: Any) -> None:
    _, write = tool_package
    module = write("shop", USER_TOOLS)
    for spec in (module, f"{module}:", ":Shop", f"{module}:Shop.price"):
        with pytest.raises(ToolLoadError, match=r"expected package\.module:ClassName"):
            load_user_tools(spec)
    bad = write(
        "bad",
        """
        from livekit.agents import llm

        class Bad(llm.FunctionContext):
            @llm.ai_callable()
            async def undocumented(self) -> str:
                return "no docstring, no description"
        """,
    )
    # the framework refuses the tool at class definition (no description): an import error
    with pytest.raises(ToolLoadError, match="missing docstring"):
        load_user_tools(f"{bad}:Bad")
    unsupported = write(
        "unsupported",
        """
        from livekit.agents import llm

        class Odd(llm.FunctionContext):
            @llm.ai_callable()
            async def odd(self, when: complex) -> str:
                \"\"\"An argument type the framework cannot describe.\"\"\"
                return ""
        """,
    )
    with pytest.raises(ToolLoadError, match=r"cannot create .*unsupported type"):
        load_user_tools(f"{unsupported}:Odd")


def test_merge_tools_refuses_duplicate_names(tool_package: Any) -> None:
    _, write = tool_package
    module = write(
        "clash",
        """
        from livekit.agents import llm

        class Clock(llm.FunctionContext):
            @llm.ai_callable()
            async def current_time(self) -> str:
                \"\"\"My own clock.\"\"\"
                return "noon"
        """,
    )
    user = load_user_tools(f"{module}:Clock")
    session = Session([])
    builtin = BuiltinTools(look=session.look, end_call=session.end_call)
    with pytest.raises(ToolLoadError, match="tool name 'current_time' is defined twice"):
        merge_tools(builtin, user)
    merged = merge_tools(builtin)  # no clash: the built-ins alone
    assert set(merged.ai_functions) == set(builtin.ai_functions)
