"""Logs: ``web`` (and ``talk``) log JSON lines with LOG_FORMAT=json, plain text without; no
secret in either."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.project_env import clean_environ

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]


async def token_request_logs(log_format: str | None, tmp_path: Path) -> tuple[str, str]:
    """Run ``python -m worker web``, get one token, stop it; (its stderr, the API secret)."""
    secret = secrets.token_urlsafe(36)
    env = clean_environ()
    env.update(
        LIVEKIT_URL="ws://127.0.0.1:7880",
        LIVEKIT_API_KEY=f"APIlog{secrets.token_hex(6)}",
        LIVEKIT_API_SECRET=secret,
        PYTHONPATH=str(REPO),
    )
    if log_format is not None:
        env["LOG_FORMAT"] = log_format
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "web", "--port", "0",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "web exited early"
            if line.startswith("Open http://"):
                url = line.split()[1].rstrip("/")
                break
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{url}/api/token", json={"room": "web-log-room"})
            assert resp.status == 200, await resp.text()
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return err.decode(), secret


async def test_web_logs_json_lines_with_log_format_json(tmp_path: Path) -> None:
    err, secret = await token_request_logs("json", tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    issued = [r for r in records if r.get("message") == "token issued"]
    assert len(issued) == 1, err
    assert issued[0]["room"] == "web-log-room"
    assert issued[0]["level"] == "INFO"
    assert secret not in err


async def test_web_logs_plain_text_by_default(tmp_path: Path) -> None:
    err, secret = await token_request_logs(None, tmp_path)
    assert "INFO worker.web: token issued" in err
    assert not err.lstrip().startswith("{")
    assert secret not in err
