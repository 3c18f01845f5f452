"""Voicing strength of 16 kHz frames: the peak of the normalized autocorrelation at pitch lags.

Voiced speech is periodic at its pitch (about 70-400 Hz), so the
autocorrelation of a speech frame has a strong peak at one of those lags.
Knocks, clicks, rumble and broadband noise have no such peak. The signal is
first limited to 100-2000 Hz, where voiced speech has most of its energy, so
low-frequency hum and high-frequency hiss do not count.
"""

from __future__ import annotations

import numpy as np

# Frames are halved to 8 kHz by summing sample pairs: the 100-2000 Hz band
# survives and the FFTs are half as long.
_DECIMATION = 2
_RATE_HZ = 16000 // _DECIMATION
_FFT_SIZE = 512
_BAND_HZ = (100.0, 2000.0)
# Pitch lags at 8 kHz: 20 samples (400 Hz) to 114 samples (about 70 Hz).
_MIN_LAG = 20
_MAX_LAG = 114
_BINS = np.fft.rfftfreq(_FFT_SIZE, 1.0 / _RATE_HZ)
_IN_BAND = (_BINS >= _BAND_HZ[0]) & (_BINS <= _BAND_HZ[1])


def voicing_strength(frames: np.ndarray) -> np.ndarray:
    """Return one value in [0, 1] per int16 frame (rows of 16 kHz samples, at most 60 ms each).

    The value is the highest autocorrelation, normalized by the frame's
    in-band energy and by the number of overlapping samples, at lags of
    2.5-14 ms. Digital silence scores 0.
    """
    if frames.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    samples = frames.astype(np.float32)
    usable = samples.shape[1] - samples.shape[1] % _DECIMATION
    decimated = samples[:, 0:usable:_DECIMATION] + samples[:, 1:usable:_DECIMATION]
    length = decimated.shape[1]
    if length + _MAX_LAG > _FFT_SIZE:
        raise ValueError(f"frames of {samples.shape[1]} samples are too long for voicing_strength (max 60 ms)")
    spectrum = np.fft.rfft(decimated, _FFT_SIZE, axis=1)
    # A complex input takes numpy's fast inverse transform; a real float32
    # array is about three times slower there (numpy 2.4).
    power = np.zeros(spectrum.shape, dtype=np.complex64)
    in_band = spectrum[:, _IN_BAND]
    power[:, _IN_BAND] = in_band.real**2 + in_band.imag**2
    autocorrelation = np.fft.irfft(power, _FFT_SIZE, axis=1)[:, : _MAX_LAG + 1]
    lags = np.arange(_MIN_LAG, _MAX_LAG + 1)
    energy = autocorrelation[:, :1]
    normalized = autocorrelation[:, lags] * (length / (length - lags)) / np.maximum(energy, 1e-3)
    strength = np.where(energy[:, 0] > 1e-3, normalized.max(axis=1), 0.0)
    return np.clip(strength, 0.0, 1.0).astype(np.float32)
