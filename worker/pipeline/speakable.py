"""Reply text as it should be spoken: markdown, code blocks, emoji and URLs made speakable.

LLMs write for screens even when told not to. The conversation passes the TTS branch of every
reply through :func:`speakable_stream` (the pipeline's ``before_tts`` hook); the transcript branch
is a separate copy of the LLM's text, so the room's transcript keeps what the model wrote.

What changes: code blocks are left out (a short spoken note stands for each), inline code and
emphasis marks lose their backticks and stars, headings, bullets and quote marks at a line's
start go, ``[text](url)`` keeps its text, a bare URL becomes its host name, emoji are dropped,
and a line that ends without punctuation gets a full stop so list items are spoken as
sentences.

Streaming: text is converted up to its last complete word (a word is never cut), and held a little
longer while a ``[link](...)`` is still open, so the TTS still starts on the first words. A plain
word that ends a sentence ("Paris.") is complete as it is: it goes at once, so the first sentence
reaches the TTS with its last token rather than with the next sentence's first.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator

CODE_NOTE = "(the code is in the transcript)"
"""Spoken in place of a code block."""
MAX_HOLD_CHARS = 400
"""An unclosed link is given up on after this much text (it is then spoken as it is)."""

_FENCE = "```"
_LINK = re.compile(r"\[([^\]\n]*)\]\(([^)\s]*)\)")
_URL = re.compile(
    r"\b(?:https?://|www\.)([^\s/?#)\]]*[^\s/?#)\].,!?;:])(?:[/?#][^\s)\]]*[^\s)\].,!?;:]|/)?",
    re.IGNORECASE,
)
_INLINE_CODE = re.compile(r"`([^`\n]*)`")
_STRONG = re.compile(r"\*\*|__|~~")
_EMPHASIS = re.compile(r"(?<![\w*])[*_](?=\S)|(?<=\S)[*_](?![\w*])")
_LINE_START = re.compile(r"(?m)^[ \t]*(?:#{1,6}[ \t]*|>[ \t]?|[-*+\u2022][ \t]+)")
_MARKUP_ONLY = re.compile(r"[ \t]*(?:#{1,6}|>|[-*+\u2022])?[ \t]*$")
_TABLE_BAR = re.compile(r"[ \t]*\|[ \t]*")
_TABLE_RULE = re.compile(r"(?m)^[ \t|:-]*-{3,}[ \t|:-]*$")
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f\u200d\U000e0020-\U000e007f]+"
)
_SPACE_BEFORE_MARK = re.compile(r"[ \t]+(?=[.,!?;:](?:\s|$))")
_UNPUNCTUATED_EOL = re.compile(r"(?<=[\w)\"'\u00bb\u201d])[ \t]*\n")
_SENTENCE_END_WORD = re.compile(
    r"(?!www\.)[^\W\d_][^\W_]*(?:['\u2019-][^\W_]+)*[.!?]+[\"'\u2019\u201d)]?", re.IGNORECASE
)
"""A word of letters (digits after the first, inner apostrophes and hyphens) and its sentence
mark: nothing in it that markdown, a ``www.`` address or a number could still continue."""


def _host(match: re.Match[str]) -> str:
    host = match.group(1).lower()
    return host.removeprefix("www.")


def _convert_prose(text: str, *, at_line_start: bool) -> str:
    """Markdown-free speakable text for ``text`` (no code blocks inside)."""
    # the chunk's first line starts a line only if the text before it ended one
    marker = "" if at_line_start else "\x00"
    text = marker + text
    text = _TABLE_RULE.sub("", text)
    text = _LINE_START.sub("", text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _URL.sub(_host, text)
    text = _INLINE_CODE.sub(lambda m: m.group(1), text)
    text = _STRONG.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _TABLE_BAR.sub(" ", text)
    text = _EMOJI.sub("", text)
    text = _SPACE_BEFORE_MARK.sub("", text)
    text = _UNPUNCTUATED_EOL.sub(".\n", text)
    return text.removeprefix(marker)


class SpeakableText:
    """Incremental converter: :meth:`push` LLM text, get speakable text; :meth:`flush` at the
    end of the reply."""

    def __init__(self) -> None:
        self._buf = ""
        self._in_code = False
        self._at_line_start = True
        self._last = ""

    def push(self, text: str) -> str:
        self._buf += text
        cut = self._cut_point()
        if cut <= 0:
            return ""
        ready, self._buf = self._buf[:cut], self._buf[cut:]
        return self._convert(ready)

    def flush(self) -> str:
        ready, self._buf = self._buf, ""
        return self._convert(ready) if ready else ""

    def _cut_point(self) -> int:
        buf = self._buf
        # up to the whitespace before the last word: the whitespace goes with what follows, so
        # a mark after a dropped emoji ("Paris 😀.") still joins its word
        text_end = len(buf.rstrip(" \t\n"))
        end = max(
            buf.rfind(" ", 0, text_end), buf.rfind("\n", 0, text_end), buf.rfind("\t", 0, text_end)
        )
        if _SENTENCE_END_WORD.fullmatch(buf, end + 1, text_end):
            end = text_end  # a finished sentence's last word: nothing can continue it
        if end <= 0:
            return 0
        end = len(buf[:end].rstrip(" \t\n"))
        # a line's start markup ("##", "-") is only recognised with its first word
        line_start = buf.rfind("\n", 0, end) + 1
        if (line_start > 0 or self._at_line_start) and _MARKUP_ONLY.match(buf, line_start, end):
            end = line_start
        if len(buf) < MAX_HOLD_CHARS:
            # keep an open [link](...) together (its text may hold spaces)
            opened = buf.rfind("[", 0, end)
            link = _LINK.match(buf, opened) if opened >= 0 else None
            if opened >= 0 and (link is None or link.end() > end) and "\n" not in buf[opened:end]:
                end = opened
            # keep a fence that may still be growing ("``" then "`python")
            tail = buf[:end].rstrip()
            run_start = len(tail.rstrip("`"))
            if (
                run_start < len(tail)
                and tail[run_start:] != _FENCE
                and tail[:run_start][-1:]
                in (
                    "",
                    " ",
                    "\n",
                )
            ):
                end = run_start
        return end

    def _convert(self, text: str) -> str:
        out: list[str] = []
        parts = text.split(_FENCE)
        for i, part in enumerate(parts):
            if i > 0:  # a fence between parts[i-1] and parts[i]
                self._in_code = not self._in_code
                if self._in_code:
                    out.append(f" {CODE_NOTE} ")
            if self._in_code or not part:
                continue
            converted = _convert_prose(part, at_line_start=self._at_line_start)
            if part[:1] == "\n" and self._last and _UNPUNCTUATED_EOL.search(self._last + "\n"):
                converted = "." + converted
            out.append(converted)
            self._at_line_start = part.endswith("\n")
            self._last = converted[-1:] or self._last
        return "".join(out)


def speakable(text: str) -> str:
    """A whole text at once (a ``say()``, a greeting)."""
    converter = SpeakableText()
    return converter.push(text) + converter.flush()


async def speakable_stream(source: AsyncIterable[str]) -> AsyncIterator[str]:
    """The TTS branch of a reply, converted as it streams."""
    converter = SpeakableText()
    async for text in source:
        out = converter.push(text)
        if out:
            yield out
    rest = converter.flush()
    if rest:
        yield rest
