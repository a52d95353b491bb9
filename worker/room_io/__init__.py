"""What the agent hears and sees of the room, and what participants send it.

``microphone`` opens the participant's audio in the frames the pipeline reads, ``utterance_audio``
keeps the user's utterance for ChatAudio (from what the VAD receives), ``video`` keeps the newest
camera or screen-share frame as a ChatImage, ``data_messages`` checks and routes data messages.
"""
