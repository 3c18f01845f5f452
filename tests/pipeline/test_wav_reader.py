"""The direct 16 kHz WAV reader gives exactly what the FFmpeg path gives."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from audioprep.demo.synth import speech_signal
from audioprep.pipeline import audio_io
from audioprep.pipeline.wav_reader import parse_wav
from tests.pipeline.test_audio_io import write_pcm_wav


def decode_both(path, channel="mix"):
    fast = audio_io.decode_to_pcm(str(path), channel)
    original = audio_io.parse_wav
    audio_io.parse_wav = lambda *args: None
    try:
        slow = audio_io.decode_to_pcm(str(path), channel)
    finally:
        audio_io.parse_wav = original
    return fast, slow


@pytest.mark.parametrize("codec", ["pcm_u8", "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_f64le"])
def test_wav_reader_matches_ffmpeg_mono(tmp_path, codec):
    signal = speech_signal([("silence", 0.2), ("speech", 1.3)], seed=5) * 1.3
    path = write_pcm_wav(tmp_path / f"{codec}.wav", signal, 16000, codec)

    (fast, fast_info), (slow, slow_info) = decode_both(path)

    assert parse_wav(str(path), path.stat().st_size).codec == codec
    assert np.array_equal(fast, slow)
    assert fast_info.duration == pytest.approx(slow_info.duration, abs=1e-9)
    assert (fast_info.codec, fast_info.channels, fast_info.sample_rate) == (slow_info.codec, slow_info.channels, slow_info.sample_rate)


@pytest.mark.parametrize("channel", ["mix", "left", "right"])
def test_wav_reader_matches_ffmpeg_stereo(tmp_path, channel):
    left = speech_signal([("speech", 1.0)], seed=1)
    right = speech_signal([("speech", 1.0)], seed=2) * 0.5
    pcm = np.clip(np.rint(np.stack([left, right], axis=1) * 32767), -32768, 32767).astype("<i2")
    path = tmp_path / "stereo.wav"
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + pcm.nbytes, b"WAVE", b"fmt ", 16, 1, 2, 16000, 64000, 4, 16, b"data", pcm.nbytes)
    path.write_bytes(header + pcm.tobytes())

    (fast, _), (slow, _) = decode_both(path, channel)

    assert np.array_equal(fast, slow)


@pytest.mark.parametrize("data_size", [0, 0xFFFFFFFF, 10 * 32000])
def test_wav_reader_unknown_or_large_size_reads_to_end(tmp_path, data_size):
    pcm = (np.arange(16001) % 300 - 150).astype("<i2")
    path = tmp_path / "sizes.wav"
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 0, b"WAVE", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16, b"data", data_size)
    path.write_bytes(header + pcm.tobytes() + b"\x07")

    (fast, fast_info), (slow, slow_info) = decode_both(path)

    assert fast.size == 16001
    assert np.array_equal(fast, slow)
    assert fast_info.header_mismatch == slow_info.header_mismatch


def test_wav_reader_declines_other_rates_and_codecs(tmp_path):
    path = write_pcm_wav(tmp_path / "rate.wav", np.zeros(800), 8000, "pcm_s16le")
    other = tmp_path / "alaw.wav"
    other.write_bytes(struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 38, b"WAVE", b"fmt ", 16, 6, 1, 16000, 16000, 1, 8, b"data", 2) + b"\x00\x00")

    assert parse_wav(str(path), path.stat().st_size).sample_rate == 8000
    assert parse_wav(str(other), other.stat().st_size) is None
