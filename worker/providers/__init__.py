"""STT, TTS, LLM and VAD: which ones a session uses, and the resilient wrappers around them.

``selection`` chooses and builds them from the settings; ``wrapper`` is the shared shape of a
provider that owns an inner one (``ReconnectingSTT``, ``SegmentingTTS``; ``FallbackLLM`` owns
several);
``errors`` turns provider failures into metrics; ``local_llm_server`` runs llama.cpp for ``talk``.
"""
