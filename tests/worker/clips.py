"""Driving clips generated for the worker tests: the scikit-image astronaut moving slightly (a real face
dlib finds in every frame), optionally with an AAC tone; and clips without any face. The generators live
in ``shared.media.samples`` (``make demo`` uses them too)."""

from shared.media.samples import SAMPLE_RATE, astronaut_frame, blank_frame, write_audio_only, write_clip

__all__ = ["SAMPLE_RATE", "astronaut_frame", "blank_frame", "write_audio_only", "write_clip"]
