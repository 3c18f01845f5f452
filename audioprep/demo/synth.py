"""Speech-like test signals: voiced syllables with formants, silence and noise.

The signals are built from first principles (a glottal pulse train shaped
by formant resonators, syllable envelopes, fricative noise), so tests and
the demo need no recordings. webrtcvad classifies the voiced parts as
speech and the gaps as non-speech.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

# Formant frequencies (Hz) of a few vowels, after Peterson and Barney (1952).
VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (300, 870, 2240), (570, 840, 2410))


def _resonator(signal: np.ndarray, frequency: float, bandwidth: float, sample_rate: int) -> np.ndarray:
    """Filter `signal` with a two-pole resonator (one formant)."""
    radius = np.exp(-np.pi * bandwidth / sample_rate)
    theta = 2 * np.pi * frequency / sample_rate
    a1, a2 = -2 * radius * np.cos(theta), radius * radius
    gain = 1 - radius
    output = np.zeros_like(signal)
    y1 = y2 = 0.0
    for i, x in enumerate(signal):
        y = gain * x - a1 * y1 - a2 * y2
        output[i] = y
        y2, y1 = y1, y
    return output


def syllable(duration: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Return one voiced syllable with a pitch glide and a rise-fall envelope."""
    num_samples = int(duration * sample_rate)
    f0 = rng.uniform(100, 220) * np.linspace(1.1, 0.9, num_samples)
    phase = np.cumsum(f0 / sample_rate)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    vowel = VOWELS[rng.integers(len(VOWELS))]
    voiced = sum(_resonator(pulses, formant, 80 + 40 * k, sample_rate) for k, formant in enumerate(vowel) if formant < sample_rate / 2)
    envelope = np.sin(np.linspace(0, np.pi, num_samples)) ** 0.6
    out = voiced * envelope
    return out / (np.max(np.abs(out)) + 1e-12)


def utterance(duration: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Return syllables of 120-300 ms joined with short dips, about `duration` seconds long."""
    parts = []
    total = 0
    target = int(duration * sample_rate)
    while total < target:
        part = syllable(rng.uniform(0.12, 0.3), sample_rate, rng)
        gap = np.zeros(int(rng.uniform(0.02, 0.06) * sample_rate))
        parts.extend([part, gap])
        total += part.size + gap.size
    return np.concatenate(parts)[:target]


def speech_signal(layout: list[tuple[str, float]], sample_rate: int = 16000, level_dbfs: float = -20.0, noise_dbfs: float | None = None, seed: int = 0) -> np.ndarray:
    """Build a float signal from a layout such as [("silence", 1.0), ("speech", 2.5)].

    Speech is scaled to `level_dbfs` RMS; `noise_dbfs` adds white noise at
    that RMS level over the whole signal.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for kind, duration in layout:
        if kind == "speech":
            part = utterance(duration, sample_rate, rng)
            rms = np.sqrt(np.mean(part**2)) + 1e-12
            part = part * (10 ** (level_dbfs / 20) / rms)
        elif kind == "silence":
            part = np.zeros(int(duration * sample_rate))
        else:
            raise ValueError(f"unknown layout kind {kind!r}; use 'speech' or 'silence'")
        parts.append(part)
    signal = np.concatenate(parts)
    if noise_dbfs is not None:
        signal = signal + rng.normal(0, 10 ** (noise_dbfs / 20), signal.size)
    return signal


def tone(frequency: float, duration: float, sample_rate: int, level_dbfs: float = -6.0) -> np.ndarray:
    t = np.arange(int(duration * sample_rate)) / sample_rate
    return np.sqrt(2) * 10 ** (level_dbfs / 20) * np.sin(2 * np.pi * frequency * t)


def write_wav(path: Path, signal: np.ndarray, sample_rate: int = 16000, channels: int = 1) -> Path:
    """Write a float signal (samples x channels, or 1-D for mono) as 16-bit PCM WAV."""
    data = np.asarray(signal, dtype=np.float64)
    if data.ndim == 1:
        data = np.repeat(data[:, None], channels, axis=1)
    pcm = np.clip(np.rint(data * 32767), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as stream:
        stream.setnchannels(pcm.shape[1])
        stream.setsampwidth(2)
        stream.setframerate(sample_rate)
        stream.writeframes(pcm.tobytes())
    return path
