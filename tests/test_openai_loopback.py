"""The OpenAI loopback server itself: what a long run (bench/soak.py) needs of it."""

from __future__ import annotations

import io
import json

import aiohttp

from tests.loopback.openai_server import OpenAIServer

JSON = {"Content-Type": "application/json"}


async def test_a_request_of_several_megabytes_is_served() -> None:
    """30 s of utterance audio is about 1.3 MB of base64: the API takes it, so must the
    loopback (aiohttp's default limit of 1 MB refused it with a 413)."""
    audio = "A" * (2 * 2**20)
    body = {
        "model": "gpt-4o-audio-preview",
        "stream": True,
        "messages": [{"role": "user", "content": [{"type": "input_audio", "data": audio}]}],
    }
    async with OpenAIServer() as server, aiohttp.ClientSession() as http:
        url = f"{server.base_url}/chat/completions"
        async with http.post(
            url, data=io.BytesIO(json.dumps(body).encode()), headers=JSON
        ) as response:
            assert response.status == 200
            await response.read()
        assert len(server.requests) == 1


async def test_a_refused_body_leaves_no_handler_behind() -> None:
    """A body aiohttp refuses (not JSON, too large) must not keep its handler task, with its
    exception and the frames holding the request, for the server's lifetime."""
    async with OpenAIServer() as server, aiohttp.ClientSession() as http:
        url = f"{server.base_url}/chat/completions"
        async with http.post(url, data=b"{not json", headers=JSON) as response:
            assert response.status >= 400
        too_large = json.dumps({"stream": True, "pad": "x" * (33 * 2**20)}).encode()
        async with http.post(url, data=io.BytesIO(too_large), headers=JSON) as response:
            assert response.status == 413
        assert server.requests == []
        assert server._handlers == set()
