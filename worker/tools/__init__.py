"""Tools the LLM can call: the concurrent runner, the built-in tools, and loading the user's.

``runner`` wraps an LLM so that its stream runs tool rounds itself (calls start as their
arguments complete and run concurrently); ``builtin`` has the tools every session gets;
``loading`` imports ``AGENT_TOOLS`` and merges function contexts.
"""
