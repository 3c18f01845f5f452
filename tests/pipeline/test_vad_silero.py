"""Silero backend: model checks, scoring of real and generated audio, config hash."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from audioprep.demo.synth import speech_signal
from audioprep.pipeline.audio_io import PcmStream
from audioprep.pipeline.config import PrepConfig
from audioprep.pipeline.errors import ConfigError

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed; pip install 'audioprep[silero]'")

from audioprep.pipeline.vad.silero import SileroDetector, check_model  # noqa: E402


def silero_model_path() -> Path | None:
    """Return silero_vad.onnx from the silero-vad package without importing it (it imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    return path if path.is_file() else None


@pytest.fixture
def model_path() -> Path:
    path = silero_model_path()
    if path is None:
        pytest.skip("silero-vad model not installed; pip install --no-deps silero-vad")
    return path


def to_frames(signal: np.ndarray, frame_samples: int = 480) -> np.ndarray:
    pcm = np.clip(np.rint(signal * 32767), -32768, 32767).astype(np.int16)
    usable = pcm.size - pcm.size % frame_samples
    return pcm[:usable].reshape(-1, frame_samples)


def test_check_model_rejects_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="VAD model not found"):
        check_model(str(tmp_path / "missing.onnx"))


def test_check_model_rejects_text_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("this is not a model\n")
    with pytest.raises(ConfigError, match="not a valid ONNX model"):
        check_model(str(path))


def test_check_model_rejects_random_bytes(tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ConfigError, match="not a valid ONNX model"):
        check_model(str(path))


def test_check_model_accepts_silero(model_path):
    assert "silero_vad.onnx" in check_model(str(model_path))


def test_check_model_rejects_other_interface(model_path):
    half = model_path.with_name("silero_vad_half.onnx")
    if not half.is_file():
        pytest.skip("silero_vad_half.onnx is not part of this silero-vad version")
    with pytest.raises(ConfigError, match="expected a Silero VAD v5 model"):
        check_model(str(half))


@pytest.fixture
def sequence_model_path(model_path) -> Path:
    path = model_path.with_name("silero_vad_16k_sequence.onnx")
    if not path.is_file():
        pytest.skip("silero_vad_16k_sequence.onnx is not part of this silero-vad version")
    return path


def test_check_model_accepts_sequence_form(sequence_model_path):
    assert "silero_vad_16k_sequence.onnx" in check_model(str(sequence_model_path))


def test_sequence_form_scores_equal_window_form(model_path, sequence_model_path):
    frames = to_frames(speech_signal([("silence", 0.7), ("speech", 2.5), ("silence", 0.4), ("speech", 1.2)], seed=3))
    window_form = SileroDetector(str(model_path), frame_ms=30)
    sequence_form = SileroDetector(str(sequence_model_path), frame_ms=30)

    expected = np.concatenate([window_form.score(frames[start : start + 11]) for start in range(0, frames.shape[0], 11)])
    scores = np.concatenate([sequence_form.score(frames[start : start + 11]) for start in range(0, frames.shape[0], 11)])

    assert expected.max() > 0.8
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_detector_scores_generated_speech(model_path):
    detector = SileroDetector(str(model_path), frame_ms=30)
    signal = speech_signal([("silence", 1.0), ("speech", 2.0), ("silence", 1.0)], seed=0)
    scores = detector.score(to_frames(signal))
    assert scores.shape == (133,)
    assert scores[:30].max() < 0.3
    assert scores[40:95].max() > 0.8


def test_detector_scores_do_not_depend_on_blocks(model_path):
    detector = SileroDetector(str(model_path), frame_ms=30)
    frames = to_frames(speech_signal([("silence", 0.5), ("speech", 1.5), ("silence", 0.5)], seed=0))
    whole = detector.score(frames)
    detector.reset()
    pieces = np.concatenate([detector.score(frames[start : start + 7]) for start in range(0, frames.shape[0], 7)])
    np.testing.assert_allclose(pieces, whole, atol=1e-5)


@pytest.mark.corpus
def test_detector_on_real_speech(model_path, corpus_dir):
    with PcmStream(str(corpus_dir / "lyra_sample1_48k.wav")) as stream:
        samples = np.concatenate(list(stream))
    detector = SileroDetector(str(model_path), frame_ms=30)
    scores = detector.score(samples[: samples.size - samples.size % 480].reshape(-1, 480))
    # The clip is one short utterance: most frames are speech.
    assert np.mean(scores >= 0.5) > 0.6


def test_config_hash_covers_model_content(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"first model")
    first = PrepConfig(vad_model=str(path))
    path.write_bytes(b"second model")
    second = PrepConfig(vad_model=str(path))
    assert first.vad_model_sha256 != second.vad_model_sha256
    assert first.config_hash() != second.config_hash()
    assert PrepConfig().vad_model_sha256 == ""
