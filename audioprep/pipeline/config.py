"""Frozen, picklable parameters of one preparation run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

# webrtcvad accepts 10, 20 or 30 ms frames at these rates only.
WEBRTC_FRAME_MS = (10, 20, 30)
OUTPUT_SAMPLE_RATE = 16000
WEBRTC_MODEL = "webrtc"
SILERO_BACKEND = "silero"
CHANNEL_POLICIES = ("mix", "left", "right")

# Policy defaults that depend on the detector. A field left at None is
# filled in from the row of the config's backend, so the built config (and
# its hash) always contains concrete values. Both rows were tuned on the
# 10-file reference set of docs/accuracy.md.
# - webrtc scores have no latency worth correcting but pass knocks and noise,
#   so the energy gate and the confirmation check stay on.
# - Silero's probabilities rise about 30 ms after a speech onset and fall
#   about 75 ms after its end (estimated on that set), so onsets get more
#   padding than offsets. Its probabilities already reject non-speech
#   sounds, and the gate and the confirmation check mostly cut quiet speech.
BACKEND_DEFAULTS: dict[str, dict[str, float | int]] = {
    WEBRTC_MODEL: {
        "energy_gate_db": 3.0,
        "min_confirm_ms": 120,
        "min_silence_ms": 400,
        "pad_start_ms": 100,
        "pad_end_ms": 100,
    },
    SILERO_BACKEND: {
        "energy_gate_db": 0.0,
        "min_confirm_ms": 0,
        "min_silence_ms": 300,
        "pad_start_ms": 80,
        "pad_end_ms": 0,
    },
}


def backend_name(vad_model: str) -> str:
    """Return the key of BACKEND_DEFAULTS for a `vad_model` value (any path is a Silero model)."""
    return WEBRTC_MODEL if vad_model == WEBRTC_MODEL else SILERO_BACKEND


@dataclass(frozen=True)
class PrepConfig:
    """Everything that decides what segments a recording yields.

    Durations carry their unit in the name. Two configs with equal
    `config_hash()` produce byte-identical segments from the same input.
    The defaults were tuned on a 10-file reference set (see docs/accuracy.md).

    Fields typed `... | None` with a None default take their value from
    BACKEND_DEFAULTS for `vad_model` when the config is built. A built
    config keeps those values when rebuilt from `as_dict()` with another
    `vad_model`, so build it from the settings the user gave instead.
    """

    vad_model: str = WEBRTC_MODEL
    # SHA-256 of the model file's content; filled in from the file when
    # empty, so a replaced model file changes `config_hash()`.
    vad_model_sha256: str = ""
    vad_aggressiveness: int = 3
    frame_ms: int = 30
    # Frame scores are in [0, 1]: Silero's speech probability, or for
    # webrtc 0 (rejected) and 0.5 + 0.5 * voicing strength (accepted).
    # A frame is speech from `speech_threshold` on and stays speech until
    # its score drops below `release_threshold`.
    speech_threshold: float = 0.5
    release_threshold: float = 0.35
    # Energy gate: a frame scoring below `gate_bypass_score` is speech only
    # when its level is at least `energy_gate_db` dB above the running noise
    # floor. 0 disables the gate.
    energy_gate_db: float | None = None
    gate_bypass_score: float = 0.75
    # A span is kept only when at least `min_confirm_ms` of its frames score
    # `confirm_score` or more (webrtc: voicing strength 0.7 or more).
    confirm_score: float = 0.85
    min_confirm_ms: int | None = None
    min_speech_ms: int = 250
    min_silence_ms: int | None = None
    # Context added before (`pad_start_ms`) and after (`pad_end_ms`) each
    # segment. `pad_ms` sets both sides at once. A built config sets it to
    # the common value, or to None when the sides differ.
    pad_ms: int | None = None
    pad_start_ms: int | None = None
    pad_end_ms: int | None = None
    max_segment_s: float = 20.0
    # Merging of short neighbours: consecutive segments separated by at most
    # `merge_max_gap_ms` are joined while the result lasts at most
    # `merge_target_s` seconds. 0 turns merging off.
    merge_target_s: float = 0.0
    merge_max_gap_ms: int = 1000
    channel: str = "mix"

    def __post_init__(self) -> None:
        self._fill_backend_defaults()
        self.validate()
        if self.vad_model != WEBRTC_MODEL and not self.vad_model_sha256:
            object.__setattr__(self, "vad_model_sha256", model_sha256(self.vad_model))

    def _fill_backend_defaults(self) -> None:
        defaults = BACKEND_DEFAULTS[backend_name(self.vad_model)]
        if self.pad_ms is not None and (not isinstance(self.pad_ms, int) or self.pad_ms < 0):
            raise ValueError(f"pad_ms must be a whole number of milliseconds >= 0, got {self.pad_ms!r}")
        for side in ("pad_start_ms", "pad_end_ms"):
            value = getattr(self, side)
            if value is None:
                value = defaults[side] if self.pad_ms is None else self.pad_ms
            elif self.pad_ms is not None and value != self.pad_ms:
                raise ValueError(
                    f"pad_ms {self.pad_ms!r} conflicts with {side} {value!r}: "
                    f"set pad_ms alone, or pad_start_ms and pad_end_ms"
                )
            object.__setattr__(self, side, value)
        common_pad = self.pad_start_ms if self.pad_start_ms == self.pad_end_ms else None
        object.__setattr__(self, "pad_ms", common_pad)
        for name in ("energy_gate_db", "min_confirm_ms", "min_silence_ms"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])

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
        if not isinstance(self.energy_gate_db, (int, float)) or self.energy_gate_db < 0:
            raise ValueError(f"energy_gate_db must be 0 or more, got {self.energy_gate_db!r}")
        for name in ("gate_bypass_score", "confirm_score"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be above 0 and at most 1, got {value!r}")
        for name in ("min_speech_ms", "min_silence_ms", "pad_start_ms", "pad_end_ms", "min_confirm_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of milliseconds >= 0, got {value!r}")
        if self.min_silence_ms < self.frame_ms:
            raise ValueError(f"min_silence_ms must be at least frame_ms ({self.frame_ms}), got {self.min_silence_ms}")
        min_max_segment_s = max(1.0, 2 * self.min_speech_ms / 1000)
        if self.max_segment_s < min_max_segment_s:
            raise ValueError(f"max_segment_s must be at least {min_max_segment_s:g}, got {self.max_segment_s!r}")
        if not 0.0 <= self.merge_target_s <= self.max_segment_s:
            raise ValueError(
                f"merge_target_s must be between 0 (off) and max_segment_s ({self.max_segment_s:g}), got {self.merge_target_s!r}"
            )
        if not isinstance(self.merge_max_gap_ms, int) or self.merge_max_gap_ms < 0:
            raise ValueError(f"merge_max_gap_ms must be a whole number of milliseconds >= 0, got {self.merge_max_gap_ms!r}")
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


def model_sha256(path: str) -> str:
    """Return the SHA-256 hex digest of a model file, or "" when it cannot be read.

    An unreadable model is reported by the model check before any run starts.
    """
    digest = hashlib.sha256()
    try:
        with Path(path).expanduser().open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()
