"""webrtcvad backend: binary decisions on 10, 20 or 30 ms frames, graded by voicing.

webrtcvad accepts only 16-bit mono PCM at 8, 16, 32 or 48 kHz; the pipeline
always hands it 16 kHz. It calls most loud sounds speech (knocks, music,
steady noise), so each frame it accepts is graded by its voicing strength
(see `voicing.py`): the score is 0 for a frame webrtcvad rejects and
0.5 + 0.5 * voicing for one it accepts. The segmentation policy uses the
grades to skip the energy gate for voiced frames and to drop spans without
enough clearly voiced frames.

The detector object keeps no state that matters between files, but
`reset()` builds a fresh one so results never depend on what the worker
processed before.
"""

from __future__ import annotations

import numpy as np

from ..config import OUTPUT_SAMPLE_RATE
from ..errors import EnvironmentCheckError, VadError
from .voicing import voicing_strength

try:
    import webrtcvad
except ImportError as exc:  # pragma: no cover - reported by check_webrtcvad()
    webrtcvad = None
    _IMPORT_ERROR = exc


def check_webrtcvad() -> str:
    """Run the detector on one silent frame; return a description or raise."""
    if webrtcvad is None:
        raise EnvironmentCheckError(
            f"webrtcvad not found ({_IMPORT_ERROR}); install it with 'pip install webrtcvad-wheels'"
        )
    try:
        webrtcvad.Vad(2).is_speech(bytes(960), OUTPUT_SAMPLE_RATE)
    except Exception as exc:
        raise EnvironmentCheckError(f"webrtcvad is not usable: {exc}") from exc
    return "webrtcvad"


# Score of a frame webrtcvad accepts, before its voicing is added.
ACCEPTED_SCORE = 0.5


class WebRtcDetector:
    """Frame detector over `webrtcvad.Vad` at a fixed aggressiveness (0-3)."""

    def __init__(self, aggressiveness: int, frame_ms: int) -> None:
        if webrtcvad is None:
            raise EnvironmentCheckError(f"webrtcvad not found ({_IMPORT_ERROR})")
        self.aggressiveness = aggressiveness
        self.frame_ms = frame_ms
        self.reset()

    def reset(self) -> None:
        self._vad = webrtcvad.Vad(self.aggressiveness)

    def score(self, frames: np.ndarray) -> np.ndarray:
        """Return 0 for each frame webrtcvad rejects, 0.5 + 0.5 * voicing strength for each it accepts."""
        accepted = self._decide(frames)
        scores = np.zeros(accepted.shape[0], dtype=np.float32)
        if accepted.any():
            voicing = voicing_strength(frames[accepted])
            scores[accepted] = ACCEPTED_SCORE + (1.0 - ACCEPTED_SCORE) * voicing
        return scores

    def _decide(self, frames: np.ndarray) -> np.ndarray:
        is_speech = self._vad.is_speech
        data = np.ascontiguousarray(frames, dtype="<i2")
        frame_bytes = data.shape[1] * 2
        buffer = data.tobytes()
        accepted = np.empty(data.shape[0], dtype=bool)
        try:
            for i in range(data.shape[0]):
                offset = i * frame_bytes
                accepted[i] = is_speech(buffer[offset : offset + frame_bytes], OUTPUT_SAMPLE_RATE)
        except Exception as exc:
            raise VadError(f"webrtcvad failed on a {self.frame_ms} ms frame: {exc}") from exc
        return accepted
