"""Decoding and conversion on audio generated in the test (no database)."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest

from audioprep.demo.files import encode
from audioprep.demo.synth import speech_signal, tone, write_wav
from audioprep.pipeline.audio_io import PcmStream, check_decoder, check_source, decode_to_pcm, write_wav_atomic
from audioprep.pipeline.errors import DecodeError, EmptyInputError, InputIOError


def level_db(samples: np.ndarray) -> float:
    values = samples.astype(np.float64) / 32768
    return 10 * np.log10(np.mean(values**2) + 1e-20)


def write_pcm_wav(path: Path, signal: np.ndarray, sample_rate: int, codec: str) -> Path:
    """Write `signal` (float, mono) with any PCM codec PyAV supports, e.g. pcm_s24le or pcm_f64le."""
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream(codec, rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(signal[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    size = min(a.size, b.size)
    return float(np.corrcoef(a[:size].astype(np.float64), b[:size].astype(np.float64))[0, 1])


def test_check_decoder_reports_pyav_version():
    assert check_decoder().startswith("PyAV ")


@pytest.mark.parametrize(
    "codec",
    ["pcm_u8", "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_f64le"],
)
def test_decode_wav_sample_formats_match_reference(tmp_path, codec):
    signal = speech_signal([("silence", 0.3), ("speech", 1.5), ("silence", 0.2)], seed=7) * 0.8
    reference = np.rint(signal * 32767).astype(np.int16)
    path = write_pcm_wav(tmp_path / f"{codec}.wav", signal, 16000, codec)

    samples, info = decode_to_pcm(str(path))

    assert info.codec == codec
    assert abs(info.duration - 2.0) < 0.001
    assert samples.size == reference.size
    assert correlation(samples, reference) >= (0.98 if codec == "pcm_u8" else 0.999)


@pytest.mark.parametrize(
    ("suffix", "container_format", "codec", "sample_rate", "channels"),
    [
        (".flac", "flac", "flac", 44100, 1),
        (".mp3", "mp3", "libmp3lame", 22050, 1),
        # FFmpeg's own Vorbis encoder writes stereo only.
        (".ogg", "ogg", "vorbis", 22050, 2),
        (".opus", "ogg", "libopus", 48000, 1),
        (".m4a", "mp4", "aac", 48000, 2),
    ],
)
def test_decode_compressed_formats(tmp_path, suffix, container_format, codec, sample_rate, channels):
    signal = speech_signal([("silence", 0.5), ("speech", 2.0), ("silence", 0.5)], sample_rate=sample_rate, seed=3)
    path = tmp_path / f"clip{suffix}"
    encode(path, signal, sample_rate, channels, container_format, codec)

    samples, info = decode_to_pcm(str(path))

    assert info.sample_rate == sample_rate
    assert info.channels == channels
    assert abs(info.duration - 3.0) < 0.1
    assert abs(samples.size / 16000 - 3.0) < 0.1
    speech = samples[int(0.7 * 16000) : int(2.3 * 16000)]
    assert level_db(speech) > level_db(samples[: int(0.4 * 16000)]) + 30


def test_decode_probes_content_not_extension(tmp_path):
    signal = speech_signal([("speech", 1.0)], sample_rate=22050, seed=1)
    path = tmp_path / "really_mp3.wav"
    encode(path, signal, 22050, 1, "mp3", "libmp3lame")

    samples, info = decode_to_pcm(str(path))

    assert info.container == "mp3"
    assert samples.size > 15000


def test_resample_attenuates_tone_above_nyquist(tmp_path):
    path = write_wav(tmp_path / "tone10k.wav", tone(10000, 2.0, 48000, level_dbfs=-6), 48000)
    in_band = write_wav(tmp_path / "tone1k.wav", tone(1000, 2.0, 48000, level_dbfs=-6), 48000)

    aliased, _ = decode_to_pcm(str(path))
    passed, _ = decode_to_pcm(str(in_band))

    middle = slice(1600, -1600)
    assert level_db(passed[middle]) > -7.5
    assert level_db(aliased[middle]) <= -6 - 60


def test_downmix_keeps_both_channels_and_channel_choice(tmp_path):
    left = tone(440, 1.0, 16000, level_dbfs=-12)
    right = np.zeros_like(left)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000)

    mixed, info = decode_to_pcm(str(path))
    only_left, _ = decode_to_pcm(str(path), channel="left")
    only_right, _ = decode_to_pcm(str(path), channel="right")

    assert info.channels == 2
    assert abs(level_db(mixed) - (level_db(only_left) - 6.02)) < 0.2
    assert level_db(only_right) < -90


def test_float_overrange_is_clipped_not_wrapped(tmp_path):
    signal = np.concatenate([np.full(800, 1.5), np.full(800, -1.5), np.zeros(800)])
    path = write_pcm_wav(tmp_path / "over.wav", signal, 16000, "pcm_f32le")

    samples, _ = decode_to_pcm(str(path))

    assert samples[200:600].min() >= 32760
    assert samples[1000:1400].max() <= -32760


def test_odd_trailing_byte_is_dropped(tmp_path):
    path = write_wav(tmp_path / "odd.wav", tone(300, 1.0, 16000), 16000)
    with open(path, "ab") as stream:
        stream.write(b"\x01")

    samples, info = decode_to_pcm(str(path))

    assert samples.size == 16000
    assert info.duration == pytest.approx(1.0, abs=1e-3)


def test_decode_stream_yields_bounded_chunks(tmp_path):
    path = write_wav(tmp_path / "long.wav", speech_signal([("speech", 4.0), ("silence", 6.0)], seed=2))

    with PcmStream(str(path)) as stream:
        sizes = [chunk.size for chunk in stream]

    assert sum(sizes) == 160000
    assert max(sizes) <= 16000 * 2


@pytest.mark.parametrize(
    ("content", "error", "reason"),
    [
        (b"", EmptyInputError, "empty: 0 bytes"),
        (b"id,name\n1,text\n", DecodeError, "decode: not an audio file"),
    ],
)
def test_decode_bad_content_reasons(tmp_path, content, error, reason):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)

    with pytest.raises(error) as caught:
        check_source(str(path))
        decode_to_pcm(str(path))

    assert caught.value.reason().startswith(reason)


def test_decode_header_without_samples_is_empty(tmp_path):
    path = tmp_path / "header_only.wav"
    with wave.open(str(path), "wb") as stream:
        stream.setnchannels(1)
        stream.setsampwidth(2)
        stream.setframerate(16000)

    with pytest.raises(EmptyInputError, match="no samples"):
        decode_to_pcm(str(path))


def test_check_source_missing_and_directory(tmp_path):
    with pytest.raises(InputIOError, match="^not found$"):
        check_source(str(tmp_path / "missing.wav"))
    with pytest.raises(InputIOError, match="not a regular file"):
        check_source(str(tmp_path))
    link = tmp_path / "dangling.wav"
    link.symlink_to(tmp_path / "nowhere.wav")
    with pytest.raises(InputIOError, match="dangling symbolic link"):
        check_source(str(link))


def test_write_wav_atomic_leaves_complete_file_only(tmp_path):
    samples = (np.arange(16000) % 200 - 100).astype(np.int16)
    target = tmp_path / "seg.wav"

    write_wav_atomic(target, samples)

    assert [path.name for path in tmp_path.iterdir()] == ["seg.wav"]
    with wave.open(str(target)) as stream:
        assert (stream.getframerate(), stream.getnchannels(), stream.getsampwidth(), stream.getnframes()) == (16000, 1, 2, 16000)
        assert np.array_equal(np.frombuffer(stream.readframes(16000), dtype="<i2"), samples)


def test_same_fault_twice_same_reason(tmp_path):
    whole = tmp_path / "whole.m4a"
    encode(whole, speech_signal([("speech", 2.0)], sample_rate=48000, seed=4), 48000, 1, "mp4", "aac")
    truncated = tmp_path / "truncated.m4a"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    reasons = []
    for _ in range(2):
        with pytest.raises(DecodeError) as caught:
            decode_to_pcm(str(truncated))
        reasons.append(caught.value.reason())

    assert reasons[0] == "decode: moov atom not found"
    assert reasons[1] == reasons[0]
