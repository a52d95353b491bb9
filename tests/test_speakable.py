"""Replies made speakable before TTS: markdown, code blocks, emoji and URLs never reach the voice,
while the transcript and the context keep what the model wrote."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.conftest import SessionFactory
from tests.loopback.openai_server import Reply
from worker.pipeline.speakable import CODE_NOTE, SpeakableText, speakable

MARKDOWN = (
    "## Paris\n"
    "The **capital** of France is *Paris* \U0001f1eb\U0001f1f7\U0001f600. "
    "See [the city guide](https://example.com/paris?x=1) or https://www.wikipedia.org/wiki/Paris.\n"
    "- Eiffel tower\n"
    "- Louvre\n"
    "Run `ls` like this:\n"
    "```bash\nls -la | grep paris\n```\n"
    "Done!"
)
SPOKEN = (
    "Paris.\nThe capital of France is Paris. See the city guide or wikipedia.org.\n"
    f"Eiffel tower.\nLouvre.\nRun ls like this:\n {CODE_NOTE} \nDone!"
)


def test_markdown_code_emoji_and_urls_become_speakable_text() -> None:
    assert speakable(MARKDOWN) == SPOKEN
    assert speakable("Plain words stay as they are, 3.5 and a_b too.") == (
        "Plain words stay as they are, 3.5 and a_b too."
    )


@pytest.mark.parametrize("seed", range(5))
def test_streamed_in_any_pieces_gives_the_same_text(seed: int) -> None:
    rng = random.Random(seed)
    converter = SpeakableText()
    out, i = [], 0
    while i < len(MARKDOWN):
        n = rng.randint(1, 6)
        out.append(converter.push(MARKDOWN[i : i + n]))
        i += n
    out.append(converter.flush())
    assert "".join(out) == SPOKEN


def test_words_are_released_before_the_reply_ends() -> None:
    converter = SpeakableText()
    assert converter.push("The **answer** is ") == "The answer"
    assert converter.push("[forty") == " is"  # an open link waits for its end
    assert converter.push(" two](http://x.org) today") == " forty two"
    assert converter.flush() == " today"


def test_a_finished_sentence_goes_with_its_last_token() -> None:
    """The first sentence reaches the TTS with its mark, not a token later with the next word
    (at 50 tokens/s, 20 ms of the reply's first audio)."""
    converter = SpeakableText()
    pushed = [converter.push(t) for t in ("It", " is", " noon", " in", " Paris", ".")]
    assert pushed[-1] == " Paris."
    assert converter.push(" The") == ""  # an ordinary last word still waits for its end
    # what the next token could still continue waits too: a number, an address, markup
    for text in ("It is 3.", "Go to www.", "It is *Paris.", "See https://x.", "A 😀."):
        held = SpeakableText()
        assert held.push(text) == text.rsplit(" ", 1)[0], text


async def test_the_voice_gets_speakable_text_and_the_transcript_the_original(
    make_session: SessionFactory,
) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        return Reply(text=MARKDOWN, ttft=0.1)

    h = await make_session(respond)
    await h.utter("tell me about Paris")
    reply = await h.wait_for_replies(1, timeout=40)

    spoken = " ".join(f.text for f in h.dg.flushes)
    assert spoken.split() == SPOKEN.split()
    committed = reply.args[0].content  # the context keeps the model's text
    assert "The **capital** of France is *Paris*" in committed
    assert "```bash\nls -la | grep paris\n```" in committed
    # the room's transcript of the reply is the model's text, code block and all
    await h.room.outbox.wait_for(
        lambda: any(t.final and "```" in t.text for t in h.room.outbox.transcriptions),
        timeout=20,
    )
    sent = " ".join(t.text for t in h.room.outbox.transcriptions if t.final)
    assert "**capital**" in sent
