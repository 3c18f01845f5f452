"""The detector interface and the factory that picks a backend."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..config import WEBRTC_MODEL, PrepConfig


class FrameDetector(Protocol):
    """Score fixed-size frames of 16 kHz mono int16 audio.

    One instance serves one file at a time; `reset()` clears any state
    carried from frame to frame before the next file.
    """

    def reset(self) -> None: ...

    def score(self, frames: np.ndarray) -> np.ndarray:
        """Return one speech score in [0, 1] per row of `frames` (shape: num_frames x frame_samples)."""
        ...


def create_detector(config: PrepConfig) -> FrameDetector:
    """Build the detector named by `config.vad_model`."""
    if config.vad_model == WEBRTC_MODEL:
        from .webrtc import WebRtcDetector

        return WebRtcDetector(config.vad_aggressiveness, config.frame_ms)
    from .silero import SileroDetector

    return SileroDetector(config.vad_model, config.frame_ms)
