"""The rolling, bounded ChatContext policy.

The conversation keeps one `livekit.agents.llm.ChatContext` for its whole life and calls
`trim_chat_context` after every commit. The call mutates that object in place (the same
`messages` list, the same ChatMessage objects) so every holder of a reference sees the
trimmed history, and returns a `TrimReport` for logging and benchmarks.

Vocabulary
----------
* The *system message* is the first message with role "system". It is always kept.
* A *turn* is a user message and everything after it up to the next user message
  (assistant replies, assistant tool-call messages, tool results). Messages before the first
  user message (e.g. a greeting said by the agent) form a leading turn of their own.
  A user message that sits between an assistant tool-call message and one of its results does
  not start a turn (the cut would split the tool group), so that turn merges with the previous
  one.
* A *tool group* is an assistant message with `tool_calls` plus its role "tool" results. Only
  whole turns are ever dropped, so a tool group is kept or dropped as one. Incomplete groups
  already present (a result whose call is gone, a call without a result) are repaired, since
  OpenAI rejects both: orphan results are removed, unanswered calls are removed from
  `tool_calls` (and an assistant message left with neither calls nor text is removed).
  So call the policy after a commit, never between appending a call and appending its results
  (the pipeline appends both in one `extend`).

Order of trimming (each step only while its bound is exceeded)
--------------------------------------------------------------
1. Keep at most `max_turns` turns (oldest go first).
2. Images only in the newest `max_image_turns` turns, audio only in the newest
   `max_audio_turns` turns; older turns keep their text.
3. Token budget `max_tokens` (system message included):
   a. drop the media of older turns, oldest first (their text stays);
   b. drop whole older turns, oldest first;
   c. drop the media of the newest turn.
   The newest turn is never dropped: if it alone (with the system message) still exceeds the
   budget, it is kept as it is, text untouched (the user's last words must reach the LLM),
   and the report says `over_budget=True`.
Because only whole turns are dropped, the history after the system message starts with a user
message whenever anything was dropped; it starts with an assistant message only when the
original leading turn (no user message yet) is still kept.

A message whose media were removed and that has no text left gets a short placeholder
("[image omitted]", "[audio omitted]", "[image and audio omitted]") because an empty
content list is rejected by the API.

Token estimate (approximate, deliberately simple and fast)
----------------------------------------------------------
* text: ceil(characters / 4) (OpenAI's rule of thumb for English), plus 4 tokens of framing
  per message;
* image, detail "low": 85 tokens;
* image, detail "high" (and "auto", counted as high unless `auto_image_detail="low"`): OpenAI's
  tile rule, 85 + 170 per 512 px tile after fitting into 2048x2048 and scaling the shortest side
  down to 768 (never up). A VideoFrame is first fitted into (inference_width, inference_height)
  if set, else its longest side into `image_max_size` (768, like `plugins.openai_llm`). A URL /
  data-URL image of unknown size counts 765 tokens (a 1024x768 image: 4 tiles);
* audio: 10 tokens per second (`audio_tokens_per_second`; OpenAI audio-input models are
  reported to tokenize input speech at about 10 tokens/s);
* tool call: name + raw JSON arguments as text, plus 10 tokens for the call framing;
  tool result: its content as text (non-string results via `str()`).

Everything here is pure and O(messages): no I/O, no logging, no encoding of media.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from livekit import rtc
from livekit.agents.llm import ChatAudio, ChatContext, ChatImage, ChatMessage

__all__ = [
    "ContextLimits",
    "TrimReport",
    "estimate_message_tokens",
    "estimate_tokens",
    "trim_chat_context",
]

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
TOOL_CALL_OVERHEAD_TOKENS = 10
LOW_DETAIL_IMAGE_TOKENS = 85
IMAGE_TILE_TOKENS = 170
UNKNOWN_SIZE_IMAGE_TOKENS = 765


@dataclass(frozen=True)
class ContextLimits:
    """Bounds of the rolling context, and the knobs of the token estimate.

    Defaults: `max_turns=20`, `max_image_turns=2` (images only in the last 2 turns),
    `max_audio_turns=1` (audio only in the last turn), `max_tokens=6000` (estimated, system
    message included). `max_image_turns=0` / `max_audio_turns=0` keep no media at all.
    """

    max_turns: int = 20
    max_image_turns: int = 2
    max_audio_turns: int = 1
    max_tokens: int = 6000
    # Estimate knobs (see the module docstring).
    image_max_size: int = 768
    auto_image_detail: Literal["low", "high"] = "high"
    audio_tokens_per_second: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if self.max_turns < 1:
            problems.append(f"max_turns must be >= 1 (got {self.max_turns})")
        if self.max_image_turns < 0:
            problems.append(f"max_image_turns must be >= 0 (got {self.max_image_turns})")
        if self.max_audio_turns < 0:
            problems.append(f"max_audio_turns must be >= 0 (got {self.max_audio_turns})")
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1 (got {self.max_tokens})")
        if self.image_max_size < 1:
            problems.append(f"image_max_size must be >= 1 (got {self.image_max_size})")
        if self.audio_tokens_per_second < 0:
            problems.append(
                f"audio_tokens_per_second must be >= 0 (got {self.audio_tokens_per_second})"
            )
        if problems:
            raise ValueError("; ".join(problems))


DEFAULT_LIMITS = ContextLimits()


@dataclass(frozen=True)
class TrimReport:
    """What one `trim_chat_context` call did. `as_dict()` is JSON-ready."""

    messages_before: int
    messages_after: int
    turns_before: int
    turns_after: int
    turns_dropped: int
    images_dropped: int
    audio_dropped: int
    orphans_dropped: int
    images_after: int
    audio_after: int
    tokens_before: int
    tokens_after: int
    over_budget: bool

    @property
    def changed(self) -> bool:
        return bool(
            self.turns_dropped or self.images_dropped or self.audio_dropped or self.orphans_dropped
        )

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


# --------------------------------------------------------------------------- estimates


def _text_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def _fit(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """Scale (width, height) down to fit into the box, keeping the aspect; never up."""
    scale = min(box_w / width, box_h / height, 1.0)
    return max(1, int(width * scale)), max(1, int(height * scale))


def _high_detail_tokens(width: int, height: int) -> int:
    width, height = _fit(width, height, 2048, 2048)
    shortest = min(width, height)
    if shortest > 768:
        scale = 768 / shortest
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
    tiles = math.ceil(width / 512) * math.ceil(height / 512)
    return LOW_DETAIL_IMAGE_TOKENS + IMAGE_TILE_TOKENS * tiles


def _image_tokens(image: ChatImage, limits: ContextLimits) -> int:
    detail = image.inference_detail
    if detail == "auto":
        detail = limits.auto_image_detail
    if detail == "low":
        return LOW_DETAIL_IMAGE_TOKENS
    frame = image.image
    if not isinstance(frame, rtc.VideoFrame) or frame.width <= 0 or frame.height <= 0:
        return UNKNOWN_SIZE_IMAGE_TOKENS
    if image.inference_width or image.inference_height:
        box_w = image.inference_width or frame.width
        box_h = image.inference_height or frame.height
    else:
        box_w = box_h = limits.image_max_size
    return _high_detail_tokens(*_fit(frame.width, frame.height, box_w, box_h))


def _audio_seconds(audio: ChatAudio) -> float:
    frames = audio.frame if isinstance(audio.frame, list) else [audio.frame]
    return sum(f.samples_per_channel / f.sample_rate for f in frames if f.sample_rate > 0)


def _content_parts(msg: ChatMessage) -> list[Any]:
    # Any: tool results keep the raw return value of the function (an int stays an int).
    content = msg.content
    if content is None:
        return []
    if isinstance(content, list):
        return list(content)
    return [content]


def estimate_message_tokens(msg: ChatMessage, limits: ContextLimits = DEFAULT_LIMITS) -> int:
    """Approximate prompt tokens of one message (see the module docstring for the rules)."""
    total = MESSAGE_OVERHEAD_TOKENS
    for part in _content_parts(msg):
        if isinstance(part, str):
            total += _text_tokens(part)
        elif isinstance(part, ChatImage):
            total += _image_tokens(part, limits)
        elif isinstance(part, ChatAudio):
            total += math.ceil(_audio_seconds(part) * limits.audio_tokens_per_second)
        else:  # raw tool results (int, dict, ...) are sent as their text form
            total += _text_tokens(str(part))
    for call in msg.tool_calls or ():
        total += TOOL_CALL_OVERHEAD_TOKENS
        total += _text_tokens(call.function_info.name) + _text_tokens(call.raw_arguments or "")
    return total


def estimate_tokens(chat_ctx: ChatContext, limits: ContextLimits = DEFAULT_LIMITS) -> int:
    """Approximate prompt tokens of the whole context."""
    return sum(estimate_message_tokens(m, limits) for m in chat_ctx.messages)


# --------------------------------------------------------------------------- media


def _count_media(msgs: Iterable[ChatMessage]) -> tuple[int, int]:
    images = audio = 0
    for msg in msgs:
        for part in _content_parts(msg):
            if isinstance(part, ChatImage):
                images += 1
            elif isinstance(part, ChatAudio):
                audio += 1
    return images, audio


def _strip_media(msg: ChatMessage, *, images: bool, audio: bool) -> tuple[int, int]:
    """Remove images and/or audio from the message content; returns (images, audio) removed."""
    parts = _content_parts(msg)
    kept: list[Any] = []
    n_images = n_audio = 0
    for part in parts:
        if images and isinstance(part, ChatImage):
            n_images += 1
        elif audio and isinstance(part, ChatAudio):
            n_audio += 1
        else:
            kept.append(part)
    if not n_images and not n_audio:
        return 0, 0
    has_text = any(isinstance(p, str) and p.strip() for p in kept)
    has_media = any(isinstance(p, ChatImage | ChatAudio) for p in kept)
    if not has_text and not has_media:
        what = " and ".join(name for name, n in (("image", n_images), ("audio", n_audio)) if n)
        kept = [f"[{what} omitted]"]
    if isinstance(msg.content, list):
        msg.content[:] = kept
    elif len(kept) == 1 and isinstance(kept[0], str):
        msg.content = kept[0]
    else:
        msg.content = kept
    return n_images, n_audio


# --------------------------------------------------------------------------- structure


def _repair_tool_groups(body: list[ChatMessage]) -> tuple[list[ChatMessage], int]:
    """Remove tool results without a call and calls without a result; returns (body, removed)."""
    answered = {m.tool_call_id for m in body if m.role == "tool" and m.tool_call_id}
    removed = 0
    out: list[ChatMessage] = []
    called: set[str] = set()
    for msg in body:
        if msg.tool_calls:
            calls = [c for c in msg.tool_calls if c.tool_call_id in answered]
            if len(calls) != len(msg.tool_calls):
                removed += len(msg.tool_calls) - len(calls)
                msg.tool_calls = calls or None
                if not calls and not any(
                    isinstance(p, str) and p.strip() for p in _content_parts(msg)
                ):
                    continue
            called.update(c.tool_call_id for c in calls)
        out.append(msg)
    body = []
    for msg in out:
        if msg.role == "tool" and msg.tool_call_id not in called:
            removed += 1
            continue
        body.append(msg)
    return body, removed


def _split_turns(body: list[ChatMessage]) -> list[list[ChatMessage]]:
    """Turns = a user message and what follows it; never a cut inside a tool group."""
    turns: list[list[ChatMessage]] = []
    pending: set[str] = set()
    for msg in body:
        if not turns or (msg.role == "user" and not pending):
            turns.append([])
        turns[-1].append(msg)
        if msg.tool_calls:
            pending.update(c.tool_call_id for c in msg.tool_calls)
        elif msg.role == "tool" and msg.tool_call_id:
            pending.discard(msg.tool_call_id)
    return turns


@dataclass
class _Turn:
    messages: list[ChatMessage]
    tokens: int = 0


# --------------------------------------------------------------------------- policy


def trim_chat_context(chat_ctx: ChatContext, limits: ContextLimits = DEFAULT_LIMITS) -> TrimReport:
    """Trim `chat_ctx` in place to `limits`; see the module docstring for the rules."""
    msgs = chat_ctx.messages
    messages_before = len(msgs)
    costs = {id(m): estimate_message_tokens(m, limits) for m in msgs}
    tokens_before = sum(costs.values())

    system = next((m for m in msgs if m.role == "system"), None)
    body = [m for m in msgs if m is not system]
    body, orphans = _repair_tool_groups(body)
    if orphans:  # some messages lost tool calls: their estimate changed
        costs = {id(m): estimate_message_tokens(m, limits) for m in msgs}
    turns = [_Turn(t) for t in _split_turns(body)]
    turns_before = len(turns)
    images_dropped = audio_dropped = 0

    def strip(turn: _Turn, *, images: bool, audio: bool) -> None:
        nonlocal images_dropped, audio_dropped
        for msg in turn.messages:
            n_img, n_aud = _strip_media(msg, images=images, audio=audio)
            if n_img or n_aud:
                images_dropped += n_img
                audio_dropped += n_aud
                costs[id(msg)] = estimate_message_tokens(msg, limits)

    def recount(turn: _Turn) -> int:
        turn.tokens = sum(costs[id(m)] for m in turn.messages)
        return turn.tokens

    # 1. turn count
    if len(turns) > limits.max_turns:
        turns = turns[-limits.max_turns :]

    # 2. media by age (0 = newest turn)
    for age, turn in enumerate(reversed(turns)):
        strip(
            turn,
            images=age >= limits.max_image_turns,
            audio=age >= limits.max_audio_turns,
        )

    # 3. token budget
    system_tokens = costs[id(system)] if system is not None else 0
    total = system_tokens + sum(recount(t) for t in turns)
    if total > limits.max_tokens:
        for turn in turns[:-1]:  # a. media of older turns, oldest first
            if total <= limits.max_tokens:
                break
            before = turn.tokens
            strip(turn, images=True, audio=True)
            total += recount(turn) - before
        drop = 0  # b. whole older turns, oldest first
        while total > limits.max_tokens and drop < len(turns) - 1:
            total -= turns[drop].tokens
            drop += 1
        turns = turns[drop:]
        if total > limits.max_tokens and turns:  # c. media of the newest turn
            before = turns[-1].tokens
            strip(turns[-1], images=True, audio=True)
            total += recount(turns[-1]) - before

    keep = {id(m) for t in turns for m in t.messages}
    if system is not None:
        keep.add(id(system))
    if len(keep) != len(msgs):
        msgs[:] = [m for m in msgs if id(m) in keep]
    images_after, audio_after = _count_media(msgs)
    return TrimReport(
        messages_before=messages_before,
        messages_after=len(msgs),
        turns_before=turns_before,
        turns_after=len(turns),
        turns_dropped=turns_before - len(turns),
        images_dropped=images_dropped,
        audio_dropped=audio_dropped,
        orphans_dropped=orphans,
        images_after=images_after,
        audio_after=audio_after,
        tokens_before=tokens_before,
        tokens_after=total,
        over_budget=total > limits.max_tokens,
    )
