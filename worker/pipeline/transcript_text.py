"""Sentences for the agent's transcription that keep the reply's text as it was written.

The framework's basic sentence tokenizer rewrites what it splits (``**Sure!** Here`` comes out as
``**Sure! ** Here``, ``(like this.)`` as ``(like this. )``), so the transcript the room gets
differed from the text the TTS spoke. :class:`VerbatimSentenceTokenizer` cuts only at whitespace
after a sentence end (closing quotes, brackets and emphasis marks stay with their sentence) and
returns slices of the original text.
"""

from __future__ import annotations

import functools
import re

from livekit.agents import tokenize
from livekit.agents.tokenize import token_stream
from livekit.agents.tokenize.tokenizer import SentenceStream

_SENTENCE_END = re.compile("[.!?\u2026]+[\"'\u201d\u2019)\\]*_~`]*(?=\\s|$)")


def split_verbatim(text: str, *, min_sentence_len: int = 20) -> list[tuple[str, int, int]]:
    """``(sentence, start, end)`` slices of ``text``; sentences shorter than
    ``min_sentence_len`` are joined to the next one (the text between them kept as it is)."""
    sentences: list[tuple[str, int, int]] = []
    start = 0
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    for end in [*ends, len(text)]:
        piece = text[start:end]
        if len(piece.strip()) < min_sentence_len and end != len(text):
            continue
        if piece.strip():
            begin = start + len(piece) - len(piece.lstrip())
            sentences.append((piece.strip(), begin, end))
        start = end
    return sentences


class VerbatimSentenceTokenizer(tokenize.SentenceTokenizer):
    def __init__(self, *, min_sentence_len: int = 20, stream_context_len: int = 10) -> None:
        self._min_len = min_sentence_len
        self._context_len = stream_context_len

    def tokenize(self, text: str, *, language: str | None = None) -> list[str]:
        return [s[0] for s in split_verbatim(text, min_sentence_len=self._min_len)]

    def stream(self, *, language: str | None = None) -> SentenceStream:
        return token_stream.BufferedSentenceStream(
            tokenizer=functools.partial(split_verbatim, min_sentence_len=self._min_len),
            min_token_len=self._min_len,
            min_ctx_len=self._context_len,
        )
