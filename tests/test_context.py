"""The rolling ChatContext policy on real livekit ChatContext / ChatImage / ChatAudio objects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, cast

import pytest
from livekit import rtc
from livekit.agents import llm
from livekit.agents.llm import ChatAudio, ChatContext, ChatImage, ChatMessage

from worker.pipeline.context import (
    ContextLimits,
    estimate_message_tokens,
    estimate_tokens,
    trim_chat_context,
)


class Tools(llm.FunctionContext):
    @llm.ai_callable(description="Weather in a city")
    async def get_weather(self, city: Annotated[str, llm.TypeInfo(description="city name")]) -> str:
        return f"sunny in {city}"


TOOLS = Tools()
_ids = iter(range(10**9))


def audio(seconds: float = 1.0) -> ChatAudio:
    frame = rtc.AudioFrame.create(16000, 1, int(16000 * seconds))
    return ChatAudio(frame=frame)


def image(w: int = 64, h: int = 48, detail: Any = "low", **kw: Any) -> ChatImage:
    frame = rtc.VideoFrame(w, h, rtc.VideoBufferType.RGBA, bytearray(w * h * 4))
    return ChatImage(image=frame, inference_detail=detail, **kw)


def user(text: str, *media: ChatImage | ChatAudio) -> ChatMessage:
    return ChatMessage(role="user", content=[text, *media])


def assistant(text: str) -> ChatMessage:
    return ChatMessage.create(text=text, role="assistant")


def tool_group(n: int, text: str = "") -> list[ChatMessage]:
    calls = []
    for _ in range(n):
        args = {"city": f"city{next(_ids)}"}
        calls.append(
            llm.FunctionCallInfo(
                tool_call_id=f"call_{next(_ids)}",
                function_info=TOOLS.ai_functions["get_weather"],
                raw_arguments=json.dumps(args),
                arguments=args,
            )
        )
    results = [
        ChatMessage(
            role="tool",
            name="get_weather",
            content=f"sunny in {c.arguments['city']}",
            tool_call_id=c.tool_call_id,
        )
        for c in calls
    ]
    return [ChatMessage.create_tool_calls(calls, text=text), *results]


def new_ctx() -> ChatContext:
    return ChatContext().append(role="system", text="You are a helpful voice assistant.")


def turns_of(ctx: ChatContext) -> list[list[ChatMessage]]:
    """User-started turns after the system message (test-side definition)."""
    out: list[list[ChatMessage]] = []
    for msg in ctx.messages[1:]:
        if msg.role == "user" or not out:
            out.append([])
        out[-1].append(msg)
    return out


def text_of(msg: ChatMessage) -> str:
    parts = msg.content if isinstance(msg.content, list) else [msg.content]
    return "".join(p for p in parts if isinstance(p, str))


def media_of(msgs: list[ChatMessage]) -> Iterator[object]:
    for m in msgs:
        if isinstance(m.content, list):
            yield from (p for p in m.content if isinstance(p, ChatImage | ChatAudio))


def assert_tool_groups_whole(ctx: ChatContext) -> None:
    """Every tool result follows its call, every call has its results (OpenAI's rule)."""
    called: set[str] = set()
    answered: set[str] = set()
    for msg in ctx.messages:
        if msg.tool_calls:
            called.update(c.tool_call_id for c in msg.tool_calls)
        if msg.role == "tool":
            assert msg.tool_call_id in called, "tool result without its call"
            answered.add(msg.tool_call_id or "")
    assert called == answered, "tool call without its result"


def test_limits_defaults_and_validation() -> None:
    limits = ContextLimits()
    assert (limits.max_turns, limits.max_image_turns, limits.max_audio_turns) == (20, 2, 1)
    assert limits.max_tokens == 6000
    with pytest.raises(ValueError, match="max_turns") as err:
        ContextLimits(max_turns=0, max_tokens=0)
    assert "max_tokens" in str(err.value)


def test_estimates() -> None:
    limits = ContextLimits()
    assert estimate_message_tokens(ChatMessage(role="user", content="x" * 400)) == 4 + 100
    base = estimate_message_tokens(user(""))
    assert estimate_message_tokens(user("", image(detail="low"))) - base == 85
    # high: 640x480 -> 2x1 tiles; 1920x1080 -> fitted to 768x432 -> 2x1 tiles;
    # inference box 320x240 -> 1 tile; URL of unknown size -> 765
    assert estimate_message_tokens(user("", image(640, 480, "high"))) - base == 85 + 2 * 170
    assert estimate_message_tokens(user("", image(1920, 1080, "auto"))) - base == 85 + 2 * 170
    boxed = image(1920, 1080, "high", inference_width=320, inference_height=240)
    assert estimate_message_tokens(user("", boxed)) - base == 85 + 170
    url = ChatImage(image="https://example.com/a.jpg", inference_detail="high")
    assert estimate_message_tokens(user("", url)) - base == 765
    low_auto = ContextLimits(auto_image_detail="low")
    assert estimate_message_tokens(user("", image(640, 480, "auto")), low_auto) - base == 85
    assert estimate_message_tokens(user("", audio(2.0)), limits) - base == 20
    split = ChatAudio(frame=[rtc.AudioFrame.create(16000, 1, 8000)] * 4)
    assert estimate_message_tokens(user("", split)) - base == 20
    call, result = tool_group(1)
    assert estimate_message_tokens(call) > estimate_message_tokens(assistant(""))
    raw = ChatMessage(role="tool", content=cast(Any, 12345), tool_call_id="x")  # raw int result
    assert estimate_message_tokens(raw) == 4 + 2
    ctx = new_ctx()
    ctx.messages += [user("hi", audio(1.0)), call, result]
    assert estimate_tokens(ctx) == sum(estimate_message_tokens(m) for m in ctx.messages)


@pytest.mark.parametrize(
    "limits",
    [
        ContextLimits(),
        ContextLimits(max_turns=5, max_tokens=900),
        ContextLimits(max_image_turns=0, max_audio_turns=0, max_tokens=400),
    ],
)
def test_200_turns_with_media_stay_bounded(limits: ContextLimits) -> None:
    ctx = new_ctx()
    msgs = ctx.messages
    system = msgs[0]
    dropped = 0
    for i in range(200):
        detail = "high" if i % 3 == 0 else "low"
        for commit in (
            [user(f"user turn {i} " + "word " * (i % 40), image(160, 120, detail), audio(1.5))],
            [*tool_group(1 + i % 3)] if i % 4 == 0 else [],
            [assistant(f"reply {i} " + "answer " * (i % 30))],
        ):
            if not commit:
                continue
            msgs.extend(commit)
            report = trim_chat_context(ctx, limits)
            dropped += report.turns_dropped

            assert ctx.messages is msgs
            assert msgs[0] is system
            turns = turns_of(ctx)
            assert len(turns) <= limits.max_turns
            assert turns[0][0].role == "user"
            for age, turn in enumerate(reversed(turns)):
                kinds = {type(p) for p in media_of(turn)}
                if age >= limits.max_image_turns:
                    assert ChatImage not in kinds
                if age >= limits.max_audio_turns:
                    assert ChatAudio not in kinds
            assert report.tokens_after == estimate_tokens(ctx, limits)
            assert report.tokens_after <= limits.max_tokens
            assert not report.over_budget
            assert_tool_groups_whole(ctx)
            # the kept user turns are the newest ones, in order, with their text
            numbers = [int(text_of(t[0]).split()[2]) for t in turns]
            assert numbers == list(range(i - len(numbers) + 1, i + 1))
    # every one of the 200 user turns is either still there or was reported dropped, once
    kept = len(turns_of(ctx))
    assert 1 <= kept <= limits.max_turns
    assert dropped == 200 - kept


def test_media_dropped_before_text() -> None:
    ctx = new_ctx()
    for i in range(5):
        ctx.messages += [user(f"look {i}", image(640, 480, "high")), assistant(f"I see {i}")]
    texts = [m.content[0] if isinstance(m.content, list) else m.content for m in ctx.messages]
    full = estimate_tokens(ctx)
    images_cost = 425 * 5
    # enough for all text and one image, not for all images
    limits = ContextLimits(max_image_turns=5, max_tokens=full - images_cost + 425)
    report = trim_chat_context(ctx, limits)
    assert report.turns_dropped == 0
    assert report.images_dropped == 4
    assert report.images_after == 1
    assert list(media_of(turns_of(ctx)[-1])), "the newest turn keeps its image"
    assert [m.content[0] if isinstance(m.content, list) else m.content for m in ctx.messages] == (
        texts
    )
    assert report.tokens_after <= limits.max_tokens


def test_turn_media_bounds_keep_text_and_placeholder() -> None:
    ctx = new_ctx()
    voice_only = ChatMessage(role="user", content=[audio(1.0)])
    ctx.messages += [voice_only, assistant("ok")]
    for i in range(3):
        ctx.messages += [user(f"u{i}", image(), audio()), assistant(f"a{i}")]
    report = trim_chat_context(ctx)
    assert report.turns_dropped == 0
    assert report.images_dropped == 1  # u0's: images only in the last 2 turns
    assert report.audio_dropped == 3  # audio only in the last turn
    assert voice_only.content == ["[audio omitted]"]  # no text left: a placeholder
    turns = turns_of(ctx)
    assert [type(p) for p in media_of(turns[-1])] == [ChatImage, ChatAudio]
    assert [type(p) for p in media_of(turns[-2])] == [ChatImage]
    assert turns[1][0].content == ["u0"]


def test_system_message_survives_tiny_budget_and_newest_turn_text_is_kept() -> None:
    ctx = new_ctx()
    system = ctx.messages[0]
    for i in range(4):
        ctx.messages += [user(f"q{i}"), assistant(f"a{i}")]
    huge = "lorem ipsum " * 10_000  # ~30k tokens
    last = user(huge, image(640, 480, "high"), audio(3))
    ctx.messages.append(last)
    report = trim_chat_context(ctx, ContextLimits(max_tokens=6000))
    assert ctx.messages == [system, last]
    assert last.content == [huge]  # media went, text untouched
    assert report.over_budget
    assert report.tokens_after > 6000
    assert report.turns_dropped == 4
    assert (report.images_dropped, report.audio_dropped) == (1, 1)


def test_system_message_not_first_is_pinned_in_place() -> None:
    ctx = ChatContext()
    ctx.messages += [user("old"), assistant("old reply")]
    system = ChatMessage.create(text="rules", role="system")
    ctx.messages.append(system)
    ctx.messages += [user("new"), assistant("new reply")]
    trim_chat_context(ctx, ContextLimits(max_turns=1))
    assert [text_of(m) for m in ctx.messages] == ["rules", "new", "new reply"]


def test_greeting_kept_while_it_fits_then_history_starts_with_user() -> None:
    ctx = new_ctx()
    ctx.messages.append(assistant("Hello! How can I help?"))
    ctx.messages += [user("hi"), assistant("hey")]
    report = trim_chat_context(ctx, ContextLimits(max_turns=2))
    assert report.turns_dropped == 0
    assert ctx.messages[1].role == "assistant"
    ctx.messages += [user("again"), assistant("sure")]
    trim_chat_context(ctx, ContextLimits(max_turns=2))
    assert [m.role for m in ctx.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_tool_groups_stay_whole_at_every_cut_point() -> None:
    cases = 0
    for n_turns in range(1, 9):
        for shape in range(4):
            for max_turns in range(1, n_turns + 2):
                for max_tokens in (40, 90, 150, 250, 400, 800, 5000):
                    ctx = new_ctx()
                    original: list[list[ChatMessage]] = []
                    for t in range(n_turns):
                        turn = [user(f"q{t}", image(), audio(0.5))]
                        if (t + shape) % 2 == 0:
                            turn += tool_group(1 + (t + shape) % 3, text="let me check")
                        if shape == 3 and t % 3 == 0:
                            turn += tool_group(2)  # a second tool round in the same turn
                        turn.append(assistant(f"a{t}"))
                        original.append(turn)
                        ctx.messages.extend(turn)
                    limits = ContextLimits(max_turns=max_turns, max_tokens=max_tokens)
                    report = trim_chat_context(ctx, limits)
                    cases += 1

                    assert_tool_groups_whole(ctx)
                    kept = {id(m) for m in ctx.messages}
                    flags = [[id(m) in kept for m in turn] for turn in original]
                    assert all(all(f) or not any(f) for f in flags), "turn split"
                    kept_turns = [all(f) for f in flags]
                    # a suffix of turns, never empty
                    assert kept_turns[-1]
                    first = kept_turns.index(True)
                    assert all(kept_turns[first:])
                    assert ctx.messages[1].role == "user"
                    assert report.turns_after == sum(kept_turns)
                    assert report.over_budget == (report.tokens_after > max_tokens)
                    if report.over_budget:
                        assert report.turns_after == 1
    assert cases > 500


def test_user_message_inside_a_tool_group_is_not_a_cut_point() -> None:
    ctx = new_ctx()
    ctx.messages += [user("first"), assistant("a")]
    call, result = tool_group(1)
    interjection = user("wait")
    ctx.messages += [user("second"), call, interjection, result, assistant("b")]
    ctx.messages += [user("third"), assistant("c")]
    trim_chat_context(ctx, ContextLimits(max_turns=2))
    # "wait" sits between a call and its result: it does not start a turn of its own
    assert [m.content for m in ctx.messages if m.role == "user"] == [
        ["second"],
        ["wait"],
        ["third"],
    ]
    assert_tool_groups_whole(ctx)
    trim_chat_context(ctx, ContextLimits(max_turns=1))
    assert [m.content for m in ctx.messages if m.role == "user"] == [["third"]]


def test_orphans_are_repaired() -> None:
    ctx = new_ctx()
    _call, result = tool_group(1)  # the call itself never made it into the context
    call2, r2a, r2b = tool_group(2)
    lone_call, _lost = tool_group(1)  # its result never made it into the context
    ctx.messages += [user("q"), result, call2, r2a, lone_call, assistant("done")]
    report = trim_chat_context(ctx)
    assert result not in ctx.messages  # its call is gone
    assert lone_call not in ctx.messages  # no result, no text
    assert call2.tool_calls is not None
    assert len(call2.tool_calls) == 1  # the unanswered call was removed, the answered one kept
    assert r2b not in ctx.messages
    assert report.orphans_dropped == 3
    assert_tool_groups_whole(ctx)
    assert report.tokens_after == estimate_tokens(ctx)


def test_identity_and_untouched_when_within_bounds() -> None:
    ctx = new_ctx()
    ctx.messages += [user("hi", image(), audio()), assistant("hello")]
    msgs, objs = ctx.messages, list(ctx.messages)
    contents = [m.content for m in objs]
    report = trim_chat_context(ctx)
    assert ctx.messages is msgs
    assert all(a is b for a, b in zip(ctx.messages, objs, strict=True))
    assert all(m.content is c for m, c in zip(ctx.messages, contents, strict=True))
    assert not report.changed
    assert report.tokens_before == report.tokens_after == estimate_tokens(ctx)
    json.dumps(report.as_dict())


def test_empty_and_system_only_contexts() -> None:
    empty = ChatContext()
    assert trim_chat_context(empty).messages_after == 0
    only = new_ctx()
    report = trim_chat_context(only, ContextLimits(max_tokens=1))
    assert len(only.messages) == 1
    assert report.over_budget
