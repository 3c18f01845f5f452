"""Decoding in a helper process: same samples and errors as one process, clean ends."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from audioprep.demo.files import encode
from audioprep.demo.synth import speech_signal
from audioprep.pipeline.audio_io import PcmStream
from audioprep.pipeline.decode_helper import HelperDiedError
from audioprep.pipeline.errors import InputIOError

LAYOUT = [("silence", 0.5), ("speech", 2.0), ("silence", 1.0), ("speech", 1.5), ("silence", 0.5)]


def decode(path: Path, helper_min_seconds: float | None):
    with PcmStream(str(path), "mix", helper_min_seconds) as stream:
        chunks = list(stream)
    return np.concatenate(chunks), stream.info, stream.used_helper


@pytest.fixture
def stereo_mp3(tmp_path) -> Path:
    path = tmp_path / "stereo.mp3"
    encode(path, speech_signal(LAYOUT, sample_rate=44100, seed=5), 44100, 2, "mp3", "libmp3lame")
    return path


def test_helper_samples_equal_one_process(stereo_mp3):
    alone, alone_info, alone_helper = decode(stereo_mp3, None)
    helped, helped_info, helped_helper = decode(stereo_mp3, 0.0)

    assert not alone_helper
    assert helped_helper
    assert np.array_equal(helped, alone)
    assert helped_info == alone_info


def test_helper_only_for_long_files(stereo_mp3):
    _samples, _info, used_helper = decode(stereo_mp3, 60.0)

    assert not used_helper


def test_helper_decode_warnings_equal_one_process(stereo_mp3, tmp_path):
    data = bytearray(stereo_mp3.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(bytes(data))

    alone, alone_info, _ = decode(corrupt, None)
    helped, helped_info, _ = decode(corrupt, 0.0)

    assert alone_info.num_decode_errors > 0
    assert helped_info.num_decode_errors == alone_info.num_decode_errors
    assert helped_info.decode_warnings == alone_info.decode_warnings
    assert np.array_equal(helped, alone)


def test_helper_error_raised_in_worker(stereo_mp3):
    with PcmStream(str(stereo_mp3), "mix", 0.0) as stream:
        # The worker has the file open; the helper opens it again and fails.
        stereo_mp3.unlink()
        with pytest.raises(InputIOError, match="^not found$"):
            list(stream)


def test_helper_killed_file_retried(tmp_path):
    # Longer than the pipe buffer, so the helper is still writing when killed.
    path = tmp_path / "long.mp3"
    encode(path, speech_signal(LAYOUT * 8, sample_rate=44100, seed=6), 44100, 1, "mp3", "libmp3lame")

    with PcmStream(str(path), "mix", 0.0) as stream:
        chunks = iter(stream)
        next(chunks)
        process = stream._helper._process
        process.send_signal(signal.SIGKILL)
        with pytest.raises(HelperDiedError) as caught:
            list(chunks)

    assert caught.value.reason().startswith("worker: decoder helper process terminated by signal 9 (SIGKILL)")


def test_helper_stopped_when_worker_stops_reading(stereo_mp3):
    with PcmStream(str(stereo_mp3), "mix", 0.0) as stream:
        next(iter(stream))
        process = stream._helper._process

    assert process.poll() is not None


def test_helper_corpus_equal_one_process(corpus_dir):
    paths = sorted(path for path in corpus_dir.rglob("*") if path.is_file() and path.suffix.lower() in (".mp3", ".flac", ".ogg", ".opus", ".m4a", ".wav", ".webm", ".aac"))
    compared = 0
    for path in paths:
        try:
            alone, alone_info, _ = decode(path, None)
        except Exception as exc:  # a file the decoder rejects must be rejected alike
            with pytest.raises(type(exc)):
                decode(path, 0.0)
            continue
        helped, helped_info, _ = decode(path, 0.0)
        assert np.array_equal(helped, alone), path.name
        assert helped_info == alone_info, path.name
        compared += 1

    assert compared >= 10
