"""The environment for a worker subprocess in tests: the developer's shell minus our settings."""

from __future__ import annotations

import os

# Variables of ours or the framework's that must not leak in from the developer's shell.
PROJECT_VARS = (
    "LIVEKIT_",
    "AGENT_",
    "DEEPGRAM_",
    "OPENAI_",
    "LLM_",
    "STT_",
    "TTS_",
    "METRICS_",
    "MAX_JOBS",
    "WORKER_PORT",
    "END_OF_TURN_",
)


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(PROJECT_VARS)}
