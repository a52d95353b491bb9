"""Start speaking at the first sentence: a streaming-TTS wrapper that flushes per text segment.

Why: VoicePipelineAgent pushes every LLM token into ONE ``tts.stream()`` and calls
``end_input()`` (the only flush) after the last token (pipeline/agent_output.py). The Deepgram
0.7.4 ``SynthesizeStream`` turns each ``flush()`` into one Deepgram ``Flush`` and the provider
synthesises only on ``Flush``, so synthesis starts once the LLM has finished the whole reply
(the cost is measured side by side with stock 0.12 in bench/voice.py).

:class:`SegmentingTTS` wraps any streaming TTS. Its stream cuts the incoming text into segments
with :class:`TextSegmenter` (the framework's sentence tokenizer, with a small minimum for the
first segment and, optionally, a cut at a clause mark once the first segment has a few words)
and calls the inner stream's ``flush()`` after each one, so the provider synthesises the first
sentence while the LLM is still generating the rest.

Output semantics (what consumers see is as if the inner TTS had been flushed only where the
caller flushed): frames come out in order; ``request_id`` is the inner stream's; ``segment_id``
changes only at the caller's ``flush()``/``end_input()``; ``is_final`` marks the last frame of a
caller segment, not of each internal sentence. Metrics are the inner TTS's (one TTSMetrics per
internal segment, with a TTFB per sentence), re-emitted by the wrapper. Closing the stream
closes the inner stream.

Failures (:class:`SegmentRetryOptions`): the wrapper, not the inner stream, retries, because it
knows the text of every segment (a Deepgram 0.7.4 stream's own retry loses it). A failed inner
stream is replaced and gets every segment not spoken yet; a segment whose audio was cut off
midway is not sent again (no repeated speech). When the last attempt fails, the rest of the reply
is sent on as timed silence, so the pipeline still forwards the reply's transcription and commits
its text; each failure is emitted as a TTSMetrics whose ``error`` says what happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
from collections.abc import AsyncIterable
from dataclasses import dataclass, field

from livekit import rtc
from livekit.agents import APIConnectOptions, tokenize, tts, utils
from livekit.agents.tokenize.tokenizer import SentenceStream

from worker.pipeline.adapter import TTSFlush, tts_conn_options, without_retries
from worker.providers.errors import describe_failure, failure_metric
from worker.providers.wrapper import Wrapper

logger = logging.getLogger("worker.providers.segmenting_tts")

_WHITESPACE = re.compile(r"\s+")
_SENTENCE_MARKS = (".", "!", "?")
_NOT_A_SENTENCE_END = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Prof|Sr|Jr|vs|etc|e\.g|i\.e)|\b[A-Za-z]|\d)\.$"
)
"""A period after an abbreviation, an initial or a digit ("Dr.", "U.", "3." of "3.5")."""
_NOT_A_SENTENCE_END_ANY_LANGUAGE = re.compile(r"\d\.$")
"""Languages other than English: only the digit rule ("3." of "3.5") holds everywhere."""
_PLAIN_SENTENCE_END = re.compile(
    r"(?:(?<!\d)[.!?\u2026]+[\"'\u201d\u00bb)]*\s+|[\u3002\uff01\uff1f]+\s*)"
)
"""End of a sentence in any language: . ! ? ... followed by a space (not the point of "3.5"),
or a CJK full stop/exclamation/question mark."""


def is_english(language: str) -> bool:
    return language.split("-", 1)[0].lower() in ("en", "english")


def split_plain_sentences(text: str, min_sentence_len: int = 20) -> list[tuple[str, int, int]]:
    """The framework's ``split_sentences`` contract without its English rules (abbreviations
    such as "Mr.", sentence starters such as "He "): for every language but English."""
    pieces: list[tuple[str, int, int]] = []
    start = 0
    for match in _PLAIN_SENTENCE_END.finditer(text):
        pieces.append((text[start : match.end()], start, match.end()))
        start = match.end()
    if start < len(text):
        pieces.append((text[start:], start, len(text)))
    sentences: list[tuple[str, int, int]] = []
    buf, buf_start = "", 0
    for piece, piece_start, piece_end in pieces:
        if not piece.strip():
            continue
        if not buf:
            buf_start = piece_start
        buf = f"{buf} {piece.strip()}" if buf else piece.strip()
        if len(buf) > min_sentence_len:
            sentences.append((buf, buf_start, piece_end))
            buf = ""
    if buf:
        sentences.append((buf, buf_start, len(text)))
    return sentences


class SentenceTokenizer(tokenize.SentenceTokenizer):
    """The framework's basic tokenizer for English; :func:`split_plain_sentences` otherwise."""

    def __init__(self, language: str = "en", *, min_sentence_len: int = 20) -> None:
        self._english = is_english(language)
        self._min = min_sentence_len
        self._basic = tokenize.basic.SentenceTokenizer(min_sentence_len=min_sentence_len)

    def tokenize(self, text: str, *, language: str | None = None) -> list[str]:
        if self._english:
            return self._basic.tokenize(text)
        return [s for s, _, _ in split_plain_sentences(text, self._min)]

    def stream(self, *, language: str | None = None) -> SentenceStream:
        if self._english:
            return self._basic.stream()
        return tokenize.token_stream.BufferedSentenceStream(
            tokenizer=functools.partial(split_plain_sentences, min_sentence_len=self._min),
            min_token_len=self._min,
            min_ctx_len=10,
        )


@dataclass(frozen=True)
class SegmenterOptions:
    """Where :class:`TextSegmenter` cuts the text."""

    first_min_chars: int = 8
    """Shortest first segment cut at a sentence end ("Sure." alone waits for more words)."""
    first_clause_min_words: int = 4
    """Cut the first segment at a clause mark once it has this many words (0: never)."""
    clause_marks: str = ",;:"
    min_sentence_len: int = 20
    """Later segments: the framework's default minimum (shorter sentences are merged)."""
    first_cut_at_sentence_mark: bool = True
    """The first segment ends as soon as a sentence mark arrives (unless it follows an
    abbreviation, an initial or a digit) instead of when the next word begins: one token less
    to wait for before the TTS starts (bench/voice.py measures the voice-path overhead)."""
    language: str = "en"
    """BCP-47 (LANGUAGE): English abbreviation and initial rules apply to English only."""


class TextSegmenter:
    """Cuts streamed text into TTS segments. Pure and synchronous: push text, get segments.

    A sentence is complete once the next one has begun (the framework's rule, see
    ``tokenize.token_stream.BufferedTokenStream``); a clause mark counts once the next word has
    begun. The first segment uses ``first_min_chars``, may end at a clause mark, and (with
    ``first_cut_at_sentence_mark``) ends at its sentence mark right away; later ones are whole
    sentences of at least ``min_sentence_len`` characters.
    """

    def __init__(self, options: SegmenterOptions | None = None) -> None:
        self._opts = options or SegmenterOptions()
        language = self._opts.language
        self._first = SentenceTokenizer(language, min_sentence_len=self._opts.first_min_chars)
        self._rest = SentenceTokenizer(language, min_sentence_len=self._opts.min_sentence_len)
        self._not_an_end = (
            _NOT_A_SENTENCE_END if is_english(language) else _NOT_A_SENTENCE_END_ANY_LANGUAGE
        )
        marks = re.escape(self._opts.clause_marks)
        self._clause = re.compile(rf"[{marks}](?=\s+\S)") if marks else None
        self._buf = ""
        self._emitted = 0

    @property
    def segments_emitted(self) -> int:
        return self._emitted

    def push(self, text: str) -> list[str]:
        """Add streamed text; return the segments it completed (often none)."""
        # One space for any whitespace run: the tokenizer joins merged sentences with one space,
        # so the segment text can be found back in the buffer.
        self._buf = _WHITESPACE.sub(" ", self._buf + text).lstrip()
        segments: list[str] = []
        while (segment := self._cut()) is not None:
            segments.append(segment)
        return segments

    def flush(self) -> list[str]:
        """End of the caller's segment: return whatever text is left as one last segment."""
        rest, self._buf = self._buf.strip(), ""
        if not rest:
            return []
        self._emitted += 1
        return [rest]

    def _cut(self) -> str | None:
        first = self._emitted == 0
        tokenizer = self._first if first else self._rest
        end: int | None = None
        sentences = tokenizer.tokenize(self._buf)
        if len(sentences) >= 2:
            head = sentences[0]
            start = self._buf.find(head)
            # Not found only when the tokenizer rewrote quotes (same length): it starts at 0.
            end = max(start, 0) + len(head)
        if first:
            clause_end = self._clause_end(limit=end)
            if clause_end is not None:
                end = clause_end
            elif end is None and self._opts.first_cut_at_sentence_mark:
                end = self._first_sentence_end()
        if not end:
            return None
        segment = self._buf[:end].strip()
        self._buf = self._buf[end:].lstrip()
        if not segment:
            return None
        self._emitted += 1
        return segment

    def _first_sentence_end(self) -> int | None:
        """The buffer (one sentence so far) ends the first segment if it ends with a sentence
        mark that is not an abbreviation's, an initial's or a number's."""
        buf = self._buf.rstrip()
        if (
            buf.endswith(_SENTENCE_MARKS)
            and len(buf) >= self._opts.first_min_chars
            and not self._not_an_end.search(buf)
        ):
            return len(buf)
        return None

    def _clause_end(self, *, limit: int | None) -> int | None:
        if self._clause is None or self._opts.first_clause_min_words <= 0:
            return None
        for match in self._clause.finditer(self._buf):
            end = match.end()
            if limit is not None and end >= limit:
                return None
            if len(self._buf[:end].split()) >= self._opts.first_clause_min_words:
                return end
        return None


@dataclass(frozen=True)
class SegmentRetryOptions:
    """What a reply does when the TTS fails (see :class:`SegmentingStream`)."""

    max_attempts: int = 3
    """Inner streams tried per reply; segments already spoken are never sent again."""
    retry_delay: float = 0.2
    text_only_seconds_per_char: float = 0.05
    """After the last attempt failed, the rest of the reply is "played" as this much silence
    per character: the pipeline then still forwards its transcription to the room, paced
    like speech, and commits its text. The failure is reported as a TTSMetrics error."""


@dataclass(frozen=True)
class SegmentingTTSOptions:
    segments: SegmenterOptions = field(default_factory=SegmenterOptions)
    retry: SegmentRetryOptions = field(default_factory=SegmentRetryOptions)


class SegmentingTTS(Wrapper[tts.TTS], tts.TTS):
    """Wraps a streaming TTS so its streams flush at every text segment (see module docstring).

    The wrapper owns ``inner``: :meth:`aclose` closes it. ``synthesize()`` and ``prewarm()`` go
    straight to ``inner``; capabilities, sample rate and channels are ``inner``'s.
    """

    def __init__(
        self, inner: tts.TTS, options: SegmentingTTSOptions | None = None, *, endpoint: str = ""
    ) -> None:
        if not inner.capabilities.streaming:
            raise ValueError(
                "SegmentingTTS needs a streaming TTS (wrap others in tts.StreamAdapter instead)"
            )
        super().__init__(
            capabilities=inner.capabilities,
            sample_rate=inner.sample_rate,
            num_channels=inner.num_channels,
        )
        self._own_inner(inner)
        self.endpoint = endpoint
        """Where the inner TTS is reached (for failure messages; no secrets)."""
        self._opts = options or SegmentingTTSOptions()

    @property
    def options(self) -> SegmenterOptions:
        return self._opts.segments

    @property
    def retry(self) -> SegmentRetryOptions:
        return self._opts.retry

    @property
    def sample_rate(self) -> int:
        return self._inner.sample_rate

    @property
    def num_channels(self) -> int:
        return self._inner.num_channels

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions | None = None
    ) -> tts.ChunkedStream:
        return self._inner.synthesize(text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions | None = None) -> SegmentingStream:
        return SegmentingStream(tts=self, conn_options=conn_options)

    def prewarm(self) -> None:
        self._inner.prewarm()

    async def aclose(self) -> None:
        await self._close_inner()


@dataclass
class _Segment:
    text: str
    ends_caller_segment: bool


class SegmentingStream(tts.SynthesizeStream):
    """One reply: text in, audio out, the inner stream flushed at every segment."""

    def __init__(
        self, *, tts: SegmentingTTS, conn_options: APIConnectOptions | None = None
    ) -> None:
        # Retries happen here, per segment (see SegmentRetryOptions); the framework's retry of
        # this stream would replay nothing (the input is consumed), so it is off.
        own = dataclasses.replace(conn_options or tts_conn_options(tts), max_retry=0)
        super().__init__(tts=tts, conn_options=own)
        self._wrapper = tts
        self._inner_conn_options = conn_options
        self._segments: list[_Segment] = []
        self._input_done = False
        self._segments_changed = asyncio.Event()
        self._done = 0
        """Segments whose audio is complete (or that were skipped after a failure)."""
        self._partial = False
        """Some audio of segment ``_done`` was already sent on."""
        self._segment_id = utils.shortuuid()
        self.failures = 0
        """Inner streams of this reply that failed."""
        self.text_only = False
        """The TTS failed for good: the rest of the reply was sent on as timed silence."""

    async def _metrics_monitor_task(self, event_aiter: AsyncIterable[tts.SynthesizedAudio]) -> None:
        # Metrics come from the inner TTS (forwarded by SegmentingTTS). Drain this copy of the
        # events so the tee does not keep every frame of the reply buffered.
        async for _ in event_aiter:
            pass

    async def _run(self) -> None:
        reader = asyncio.create_task(self._read_input(), name="SegmentingStream.read_input")
        try:
            await self._synthesize()
            await reader  # ended with the input; raises if reading failed
        finally:
            await utils.aio.gracefully_cancel(reader)

    async def _read_input(self) -> None:
        segmenter = TextSegmenter(self._wrapper.options)

        def add(texts: list[str], *, caller_flush: bool) -> None:
            for i, text in enumerate(texts):
                self._segments.append(_Segment(text, caller_flush and i == len(texts) - 1))
                logger.debug(
                    "tts segment ready",
                    extra={"segment": segmenter.segments_emitted, "chars": len(text)},
                )
            if texts:
                self._segments_changed.set()

        async for data in self._input_ch:
            if isinstance(data, TTSFlush):
                add(segmenter.flush(), caller_flush=True)
            else:
                add(segmenter.push(data), caller_flush=False)
        add(segmenter.flush(), caller_flush=True)
        self._input_done = True
        self._segments_changed.set()

    async def _synthesize(self) -> None:
        retry = self._wrapper.retry
        for attempt in range(1, retry.max_attempts + 1):
            inner = without_retries(
                self._wrapper.inner.stream(conn_options=self._inner_conn_options)
            )
            try:
                await self._attempt(inner)
                return
            except Exception as e:
                error: Exception = e
            finally:
                await inner.aclose()
            if self._partial:  # never repeat audio: the rest of that segment is lost
                logger.debug("tts segment cut short by a failure", extra={"segment": self._done})
                self._complete_segment()
            self.failures += 1
            last = attempt == retry.max_attempts
            self._report_failure(error, recovered=not last)
            if not last:
                await asyncio.sleep(retry.retry_delay)
        self.text_only = True
        await self._play_text_only()

    async def _attempt(self, inner: tts.SynthesizeStream) -> None:
        """Send the segments not done yet to ``inner``, as they come, and pass its audio on."""

        async def feed() -> None:
            sent = self._done
            try:
                while True:
                    while sent < len(self._segments):
                        inner.push_text(self._segments[sent].text)
                        inner.flush()
                        sent += 1
                    if self._input_done:
                        inner.end_input()
                        return
                    self._segments_changed.clear()
                    await self._segments_changed.wait()
            except RuntimeError:
                # The inner stream closed (it failed): the output loop raises its error.
                logger.debug("inner tts stream closed before the input ended")

        feeder = asyncio.create_task(feed(), name="SegmentingStream.feed")
        try:
            async for ev in inner:
                final = ev.is_final and self._next_ends_caller_segment()
                self._send(ev.frame, ev.request_id, is_final=final, delta_text=ev.delta_text)
                self._partial = True
                if ev.is_final:
                    self._complete_segment()
            if not self._input_done:
                raise RuntimeError("the inner tts stream ended before the reply's input did")
            # Ended normally after all the text: a segment without audio (no final) is done too.
            while self._done < len(self._segments):
                self._complete_segment()
        finally:
            await utils.aio.gracefully_cancel(feeder)

    def _send(
        self, frame: rtc.AudioFrame, request_id: str, *, is_final: bool, delta_text: str = ""
    ) -> None:
        self._event_ch.send_nowait(
            tts.SynthesizedAudio(
                frame=frame,
                request_id=request_id,
                is_final=is_final,
                segment_id=self._segment_id,
                delta_text=delta_text,
            )
        )
        if is_final:
            self._segment_id = utils.shortuuid()

    def _next_ends_caller_segment(self) -> bool:
        return self._done < len(self._segments) and self._segments[self._done].ends_caller_segment

    def _complete_segment(self) -> None:
        """Segment ``_done`` is over (spoken, or cut short after a failure)."""
        self._done += 1
        self._partial = False

    async def _play_text_only(self) -> None:
        """The TTS gave up: send timed silence for every segment left (as they come), so the
        pipeline still plays the reply, forwards its transcription and commits its text."""
        retry = self._wrapper.retry
        rate, channels = self._wrapper.sample_rate, self._wrapper.num_channels
        chunk = max(1, rate // 10)  # 100 ms frames
        while True:
            while self._done < len(self._segments):
                text = self._segments[self._done].text
                samples = max(chunk, round(len(text) * retry.text_only_seconds_per_char * rate))
                final = self._next_ends_caller_segment()
                for start in range(0, samples, chunk):
                    n = min(chunk, samples - start)
                    silence = rtc.AudioFrame(bytes(2 * n * channels), rate, channels, n)
                    self._send(silence, "text-only", is_final=final and start + n >= samples)
                self._complete_segment()
            if self._input_done:
                return
            self._segments_changed.clear()
            await self._segments_changed.wait()

    def _report_failure(self, error: Exception, *, recovered: bool) -> None:
        logger.warning(
            "%s; %s",
            describe_failure(
                "TTS", error, label=self._wrapper.inner.label, endpoint=self._wrapper.endpoint
            ),
            "retrying" if recovered else "the rest of the reply is text only",
            extra={"error": type(error).__name__, "failures": self.failures},
        )
        self._wrapper.emit(
            "metrics_collected",
            failure_metric("tts", label=self._wrapper.label, error=error, recovered=recovered),
        )
