"""The plugin's logger: one name for all its modules, as LiveKit plugins' ``log.py``."""

import logging

logger = logging.getLogger("plugins.livekit_vad")
