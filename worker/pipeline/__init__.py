"""The conversation: turn-taking, the rolling context, and the one seam to livekit-agents 0.12.

``conversation`` is the policy (what goes into a turn, when a reply is withdrawn, what is
reported), ``context`` bounds the ChatContext, and ``adapter`` is the only module that reaches
the framework's private members (each listed in its docstring, pinned by
tests/test_conversation_internals.py).
"""
