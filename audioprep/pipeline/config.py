"""Frozen, picklable parameters of one preparation run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

# webrtcvad accepts 10, 20 or 30 ms frames at these rates only.
WEBRTC_FRAME_MS = (10, 20, 30)
OUTPUT_SAMPLE_RATE = 16000
WEBRTC_MODEL = "webrtc"
CHANNEL_POLICIES = ("mix", "left", "right")


@dataclass(frozen=True)
class PrepConfig:
    """Everything that decides what segments a recording yields.

    Durations carry their unit in the name. Two configs with equal
    `config_hash()` produce byte-identical segments from the same input.
    """

    vad_model: str = WEBRTC_MODEL
    vad_aggressiveness: int = 2
    frame_ms: int = 30
    # Silero backend: a frame is speech above `speech_threshold` and stays
    # speech until the probability drops below `release_threshold`.
    speech_threshold: float = 0.5
    release_threshold: float = 0.35
    # Energy gate: a frame is speech only when its level is at least this
    # many dB above the running noise floor. 0 disables the gate.
    energy_gate_db: float = 0.0
    min_speech_ms: int = 250
    min_silence_ms: int = 300
    pad_ms: int = 100
    max_segment_s: float = 20.0
    channel: str = "mix"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        if self.vad_aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"vad_aggressiveness must be 0, 1, 2 or 3, got {self.vad_aggressiveness!r}")
        if self.frame_ms not in WEBRTC_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {WEBRTC_FRAME_MS}, got {self.frame_ms!r}")
        if not 0.0 < self.speech_threshold < 1.0:
            raise ValueError(f"speech_threshold must be between 0 and 1, got {self.speech_threshold!r}")
        if not 0.0 < self.release_threshold <= self.speech_threshold:
            raise ValueError(
                f"release_threshold must be above 0 and at most speech_threshold "
                f"({self.speech_threshold}), got {self.release_threshold!r}"
            )
        if self.energy_gate_db < 0:
            raise ValueError(f"energy_gate_db must be 0 or more, got {self.energy_gate_db!r}")
        for name in ("min_speech_ms", "min_silence_ms", "pad_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of milliseconds >= 0, got {value!r}")
        if self.min_silence_ms < self.frame_ms:
            raise ValueError(f"min_silence_ms must be at least frame_ms ({self.frame_ms}), got {self.min_silence_ms}")
        min_max_segment_s = max(1.0, 2 * self.min_speech_ms / 1000)
        if self.max_segment_s < min_max_segment_s:
            raise ValueError(f"max_segment_s must be at least {min_max_segment_s:g}, got {self.max_segment_s!r}")
        if self.channel not in CHANNEL_POLICIES:
            raise ValueError(f"channel must be one of {CHANNEL_POLICIES}, got {self.channel!r}")

    @property
    def frame_samples(self) -> int:
        return OUTPUT_SAMPLE_RATE * self.frame_ms // 1000

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Return a stable 16-hex-digit hash of every field."""
        payload = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, values: dict) -> PrepConfig:
        """Build a config from a dict, rejecting unknown keys."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown segmentation settings: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)
