"""Command line: the framework's worker commands plus the project's own.

``start``, ``dev``, ``connect`` and ``download-files`` are handed to ``livekit.agents.cli`` as
in any LiveKit agent; ``dispatch``, ``token`` and ``talk`` are ours. Usage errors and bad
configuration print one line per problem and exit with status 2, never a traceback.

As with LiveKit's own CLI, ``--url``, ``--api-key`` and ``--api-secret`` win over the
environment, and ``.env.local`` then ``.env`` fill in what the environment leaves unset. Both
go into ``os.environ`` before anything else runs, so job processes (spawned later, inheriting
it) and the user's tools see the same values as the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from worker.config import (
    ConfigError,
    Need,
    Settings,
    export_dotenv,
    load_settings,
    usage_error,
)
from worker.livekit_api import create_dispatch, mint_token, parse_ttl
from worker.logs import setup_logs
from worker.redaction import install_log_redaction, redact

FRAMEWORK_COMMANDS = {
    "start": "run the worker in production mode (drains running jobs on SIGTERM)",
    "dev": "run the worker in development mode (reloads on code changes)",
    "connect": "connect to one room right away (--room NAME)",
    "download-files": "download the plugins' model files (none needed: models ship in wheels)",
}
OWN_COMMANDS = {
    "dispatch": "dispatch this agent (AGENT_NAME) into a room through the server API",
    "token": "print a join token for a person (room join only) to talk to the agent",
    "talk": "talk to the agent from an audio file, in-process (no server; offline without keys)",
    "web": "serve the browser client and a development token endpoint",
}

LIVEKIT_FLAGS = {
    "--url": ("LIVEKIT_URL", "LiveKit server or Cloud project URL"),
    "--api-key": ("LIVEKIT_API_KEY", "API key of the server or project"),
    "--api-secret": ("LIVEKIT_API_SECRET", "API secret of the server or project"),
}
"""LiveKit CLI flags -> the variable each one overrides."""
FLAG_COMMANDS = ("start", "dev", "connect", "dispatch", "token")
LOCAL_PORT_COMMANDS = ("dev", "connect")
"""Development commands: their health server takes a free port unless WORKER_PORT is set, so
they run next to a ``start`` worker on the same machine."""


def add_livekit_flags(parser: argparse.ArgumentParser) -> None:
    for flag, (variable, text) in LIVEKIT_FLAGS.items():
        parser.add_argument(flag, metavar=variable, help=f"{text} (wins over {variable})")


def take_livekit_flags(command: str, argv: list[str]) -> list[str]:
    """Move ``--url/--api-key/--api-secret`` from ``argv`` into ``os.environ``; the rest."""
    parser = argparse.ArgumentParser(
        prog=f"python -m worker {command}", add_help=False, allow_abbrev=False
    )
    add_livekit_flags(parser)
    given, rest = parser.parse_known_args(_attached(argv))
    for flag, (variable, _) in LIVEKIT_FLAGS.items():
        value = getattr(given, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            os.environ[variable] = value
    return rest


def _attached(argv: list[str]) -> list[str]:
    """``--api-secret VALUE`` -> ``--api-secret=VALUE``: a generated secret may start with
    ``-``, which argparse would otherwise take for an option."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        value = next(args, None) if arg in LIVEKIT_FLAGS else None
        out.append(f"{arg}={value}" if value is not None else arg)
    return out


def _settings(needs: Sequence[Need], problems: Sequence[str] = ()) -> Settings:
    """Load the settings; exit with ``problems`` (usage errors) and the config's own, together."""
    try:
        settings = load_settings(needs=needs)
    except ConfigError as e:
        usage_error([*problems, *e.problems])
    if problems:
        usage_error(problems)
    install_log_redaction(settings.secrets())
    return settings


def _help() -> str:
    width = max(map(len, FRAMEWORK_COMMANDS | OWN_COMMANDS)) + 2
    lines = ["usage: python -m worker COMMAND [ARGS]...", "", "LiveKit voice-agent worker.", ""]
    lines.append("Worker commands (livekit-agents CLI, see COMMAND --help):")
    lines += [f"  {name:<{width}}{text}" for name, text in FRAMEWORK_COMMANDS.items()]
    lines += ["", "Project commands (see COMMAND --help):"]
    lines += [f"  {name:<{width}}{text}" for name, text in OWN_COMMANDS.items()]
    lines += [
        "",
        "Configuration comes from the environment, then ./.env.local and ./.env (see README.md);",
        "start, dev, connect, dispatch and token take --url, --api-key and --api-secret too.",
    ]
    return "\n".join(lines)


def _run_framework(command: str, argv: list[str]) -> None:
    from livekit.agents import cli

    from worker.entrypoint import WORKER_NEEDS, worker_options

    argv = ["--help" if arg == "-h" else arg for arg in argv]  # click knows only --help
    if command == "start":
        from worker.service import parse_start

        start_options = parse_start(argv)  # --help and bad flags end here, before the config
    needs = () if command == "download-files" or "--help" in argv else WORKER_NEEDS
    settings = _settings(needs)
    if command in LOCAL_PORT_COMMANDS and not os.environ.get("WORKER_PORT", "").strip():
        settings = dataclasses.replace(settings, worker_port=0)
    if settings.tools and needs:
        from worker.tools.loading import ToolLoadError, load_user_tools

        try:  # fail at start-up, not in the first job
            load_user_tools(settings.tools)
        except ToolLoadError as e:
            usage_error([str(e)])
    if command == "start":
        from worker.service import run_start

        run_start(settings, start_options)
        return
    sys.argv = [sys.argv[0], command, *argv]
    cli.run_app(worker_options(settings))


# --- dispatch -------------------------------------------------------------------------------


def _dispatch(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m worker dispatch", description=OWN_COMMANDS["dispatch"]
    )
    parser.add_argument("--room", required=True, help="room to dispatch the agent into")
    parser.add_argument("--metadata", default="", help="job metadata, a JSON document")
    add_livekit_flags(parser)  # taken out of argv by main(); listed for --help
    args = parser.parse_args(argv)
    problems = []
    if args.metadata:
        try:
            json.loads(args.metadata)
        except json.JSONDecodeError as e:
            problems.append(f"--metadata: not valid JSON ({e.msg} at position {e.pos})")
    if not args.room.strip():
        problems.append("--room: must not be empty")
    settings = _settings((Need.LIVEKIT_SERVER, Need.AGENT_NAME), problems)
    try:
        dispatch_id = asyncio.run(create_dispatch(settings, args.room, args.metadata))
    except Exception as e:  # report the server's answer, masked like every log line
        usage_error([f"dispatch failed: {redact(str(e) or type(e).__name__, settings.secrets())}"])
    print(dispatch_id)


# --- token ----------------------------------------------------------------------------------


def _token(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m worker token", description=OWN_COMMANDS["token"]
    )
    parser.add_argument("--room", required=True, help="the only room the token may join")
    parser.add_argument("--identity", required=True, help="the participant identity")
    parser.add_argument("--name", default="", help="display name (default: the identity)")
    parser.add_argument("--ttl", default="1h", help="validity, e.g. 15m, 2h (max 24h; default 1h)")
    add_livekit_flags(parser)  # taken out of argv by main(); listed for --help
    args = parser.parse_args(argv)
    problems = []
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as e:
        problems.append(f"--ttl: {e}")
    for flag, value in (("--room", args.room), ("--identity", args.identity)):
        if not value.strip():
            problems.append(f"{flag}: must not be empty")
    settings = _settings((Need.LIVEKIT_KEYS,), problems)
    print(mint_token(settings, args.room, args.identity, ttl, args.name))


# --- talk -----------------------------------------------------------------------------------

TALK_EPILOG = """\
The agent runs the same conversation code as in a room job, in an in-process room: INPUT (any
audio file FFmpeg decodes: WAV of any sample format, MP3, Ogg/Opus, FLAC, M4A, a video's sound)
is the participant's microphone, played in real time; --image (PNG, JPEG or the first frame of
a video) is their camera. Prints the transcript and one latency line per turn.

Providers, decided one by one (cloud where keys are set, local otherwise):
  STT/TTS  no DEEPGRAM_API_KEY: Whisper tiny.en / Piper (STT_PROVIDER=whisper,
           TTS_PROVIDER=piper); setting either to deepgram without the key is an error.
           With the key: STT_PROVIDER / TTS_PROVIDER as configured (default deepgram).
  LLM      no OPENAI_API_KEY and no OPENAI_BASE_URL: a local llama.cpp server with
           SmolLM2-135M, started for this run (LLM_MODEL is set to its name). Otherwise
           OPENAI_BASE_URL (any OpenAI-compatible server) or OpenAI, model LLM_MODEL.
           The local model cannot see images: with it, --image is left off (with a note).

--fast skips the 0.5 s lead-in silence and trims silence at the start and end of INPUT
(pauses inside the speech stay, so turns end where they would). After the input, the agent
is given time to finish answering (at most --reply-timeout seconds).
Exit status: 0 done, 1 the agent did not answer or every reply failed, 2 bad arguments, input
or configuration, 130 Ctrl-C, 143 SIGTERM (what it started is stopped first)."""


def _talk(argv: list[str]) -> None:
    from worker.providers.local_llm_server import LocalLLMError
    from worker.tools.loading import ToolLoadError

    from . import talk

    parser = argparse.ArgumentParser(
        prog="python -m worker talk",
        description=OWN_COMMANDS["talk"],
        epilog=TALK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="INPUT", type=Path, help="what the participant says")
    parser.add_argument(
        "--image", metavar="PATH", type=Path, help="the camera (PNG, JPEG or a video's first frame)"
    )
    parser.add_argument(
        "--out", metavar="reply.wav", type=Path, default=Path("reply.wav"),
        help="the agent's audio (default: reply.wav)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics", metavar="FILE.jsonl", type=Path,
        help='every metrics data message, one {"topic", "payload"} per line',
    )  # fmt: skip
    parser.add_argument(
        "--transcript", metavar="FILE.txt", type=Path, help="the conversation as text"
    )
    parser.add_argument("--fast", action="store_true", help="skip silence padding (see below)")
    parser.add_argument(
        "--reply-timeout", metavar="SECONDS", type=float, default=60.0,
        help="longest wait for the agent's answer after the input ends (default 60)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    options = talk.TalkOptions(
        input=args.input,
        image=args.image,
        out=args.out,
        metrics=args.metrics,
        transcript=args.transcript,
        fast=args.fast,
        reply_timeout=args.reply_timeout,
    )
    problems: list[str] = []
    if not 0 < args.reply_timeout <= 3600:
        problems.append("--reply-timeout: must be more than 0 and at most 3600 seconds")
    problems += talk.check_outputs(options)
    inputs: talk.TalkInputs | None = None
    try:
        inputs = asyncio.run(talk.load_inputs(options))
    except talk.TalkError as e:
        problems += e.problems
    try:
        config = talk.talk_config()
    except ConfigError as e:
        usage_error([*problems, *e.problems])
    if problems or inputs is None:
        usage_error(problems)
    install_log_redaction(config.settings.secrets())
    if config.settings.log_format == "json":
        setup_logs("json", logging.WARNING)  # the transcript on stdout stays readable
    else:
        talk.console_logging()
    print(f"providers: {talk.describe_providers(config)}", file=sys.stderr)
    try:
        result = talk.run_stoppable(talk.run_talk(options, inputs, config))
    except talk.Stopped as e:
        print(f"talk: stopped ({e}); everything it started was stopped", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except LocalLLMError as e:
        usage_error([f"local LLM: {e}"])
    except ToolLoadError as e:
        usage_error([str(e)])
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except OSError as e:
        print(f"error: talk failed: {redact(str(e), config.settings.secrets())}", file=sys.stderr)
        raise SystemExit(1) from None
    print(talk.report(result))
    for line in talk.summary(options, result):
        print(line, file=sys.stderr)
    problem = talk.failure(result)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(1)


def _web(argv: list[str]) -> None:
    from worker.web import web_command

    web_command(argv)


# --- main -----------------------------------------------------------------------------------

OwnCommand = Callable[[list[str]], None]


def _own_commands() -> dict[str, OwnCommand]:
    return {"dispatch": _dispatch, "token": _token, "talk": _talk, "web": _web}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_help())
        return
    command, rest = args[0], args[1:]
    export_dotenv()
    if command in FLAG_COMMANDS:
        rest = take_livekit_flags(command, rest)
    own = _own_commands()
    if command in own:
        own[command](rest)
    elif command in FRAMEWORK_COMMANDS:
        _run_framework(command, rest)
    else:
        print(_help(), file=sys.stderr)
        usage_error([f"unknown command {command!r}"])
