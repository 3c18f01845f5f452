"""Silero VAD backend: speech probabilities from the Silero VAD ONNX model (v5 interface).

The model reads 512-sample windows of 16 kHz float audio with the previous
64 samples of the stream prepended, and carries a recurrent state from
window to window. Without the state or the context it returns probabilities
near zero for speech, so both are kept across calls to `score()` and
cleared only by `reset()`.

Two forms of the model are accepted. The window form (silero_vad.onnx of
the silero-vad package: inputs input, state and sr) takes one window per
call, with a state of shape (2, 1, 128). The sequence form
(silero_vad_16k_sequence.onnx: inputs input, h and c) takes all windows
of a block in one call, with an LSTM state h and c of shape (1, 1, 128)
each. Both give the same probabilities. The sequence form costs less than
half the time per window, because it pays the per-call overhead once per
block.

Windows (32 ms) do not line up with frames (10-30 ms). A frame gets the
probability of the last window that ends inside or before it, so scores do
not depend on how the audio was split into blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import OUTPUT_SAMPLE_RATE
from ..errors import ConfigError, EnvironmentCheckError, VadError

WINDOW_SAMPLES = 512
CONTEXT_SAMPLES = 64
STATE_SHAPE = (2, 1, 128)
WINDOW_INPUTS = ("input", "state", "sr")
SEQUENCE_INPUTS = ("input", "h", "c")
LSTM_SHAPE = (1, 1, 128)
INSTALL_HINT = "install the optional extra with: pip install 'audioprep[silero]'"
# Self-test thresholds for `check_model`, measured with the silero-vad 6.2
# model: it scores the generated clip up to 0.96 and faint noise up to 0.12.
SELF_TEST_MIN_SPEECH_PROBABILITY = 0.6
SELF_TEST_MAX_SILENCE_PROBABILITY = 0.3

# One ONNX Runtime session per model file and worker process.
_sessions: dict[tuple[str, str], object] = {}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise EnvironmentCheckError(f"onnxruntime is not installed ({exc}); {INSTALL_HINT}") from exc
    return onnxruntime


def load_session(model_path: str):
    """Return the process's single-threaded ONNX Runtime session for `model_path`.

    Raises ConfigError when the file is missing or is not an ONNX model.
    """
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"VAD model not found: {model_path}; pass 'webrtc' or the path of a Silero VAD .onnx file")
    stat = path.stat()
    key = (str(path.resolve()), f"{stat.st_size}:{stat.st_mtime_ns}")
    session = _sessions.get(key)
    if session is not None:
        return session
    onnxruntime = _import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConfigError(f"VAD model {model_path} is not a valid ONNX model: {' '.join(str(exc).split())[:200]}") from exc
    _sessions[key] = session
    return session


class SileroDetector:
    """Frame detector over the Silero VAD ONNX model; scores are speech probabilities."""

    def __init__(self, model_path: str, frame_ms: int) -> None:
        self.model_path = model_path
        self.frame_ms = frame_ms
        self.frame_samples = OUTPUT_SAMPLE_RATE * frame_ms // 1000
        self._session = load_session(model_path)
        self._sequence = _interface(self._session, model_path) == "sequence"
        self._sample_rate = np.array(OUTPUT_SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._lstm_h = np.zeros(LSTM_SHAPE, dtype=np.float32)
        self._lstm_c = np.zeros(LSTM_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        # Stream position (in samples) of the first pending sample and of
        # the end of the last frame scored.
        self._pending_start = 0
        self._frames_end = 0
        self._last_probability = 0.0

    def _run_window(self, window: np.ndarray) -> float:
        model_input = np.concatenate((self._context, window))[np.newaxis, :]
        try:
            output, state = self._session.run(
                None, {"input": model_input, "state": self._state, "sr": self._sample_rate}
            )
        except Exception as exc:
            raise VadError(f"Silero model {self.model_path} failed on a {WINDOW_SAMPLES}-sample window: {exc}") from exc
        self._state = state
        self._context = window[-CONTEXT_SAMPLES:]
        return float(np.asarray(output).reshape(-1)[0])

    def _run_sequence(self, windows: np.ndarray) -> np.ndarray:
        """Return the probabilities of consecutive windows (rows of WINDOW_SAMPLES) from one call of a sequence model."""
        contexts = np.concatenate((self._context[np.newaxis, :], windows[:-1, -CONTEXT_SAMPLES:]))
        model_input = np.concatenate((contexts, windows), axis=1)
        try:
            probabilities, self._lstm_h, self._lstm_c = self._session.run(
                None, {"input": model_input, "h": self._lstm_h, "c": self._lstm_c}
            )[:3]
        except Exception as exc:
            raise VadError(f"Silero model {self.model_path} failed on {windows.shape[0]} windows: {exc}") from exc
        self._context = windows[-1, -CONTEXT_SAMPLES:].copy()
        return np.asarray(probabilities, dtype=np.float32).reshape(-1)

    def score(self, frames: np.ndarray) -> np.ndarray:
        """Return one speech probability per frame (rows of 16 kHz int16 samples)."""
        num_frames = frames.shape[0]
        samples = frames.reshape(-1).astype(np.float32) / 32768.0
        pending = np.concatenate((self._pending, samples))
        num_windows = pending.size // WINDOW_SAMPLES
        used = num_windows * WINDOW_SAMPLES
        windows = pending[:used].reshape(num_windows, WINDOW_SAMPLES)
        window_ends = self._pending_start + WINDOW_SAMPLES * np.arange(1, num_windows + 1, dtype=np.int64)
        if num_windows == 0:
            probabilities = np.zeros(0, dtype=np.float32)
        elif self._sequence:
            probabilities = self._run_sequence(windows)
        else:
            probabilities = np.array([self._run_window(window) for window in windows], dtype=np.float32)
        self._pending = pending[used:]
        self._pending_start += used

        frame_ends = self._frames_end + self.frame_samples * np.arange(1, num_frames + 1, dtype=np.int64)
        self._frames_end = int(frame_ends[-1]) if num_frames else self._frames_end
        # Index of the last window ending at or before each frame's end; -1
        # means a window of an earlier call (or none yet).
        latest = np.searchsorted(window_ends, frame_ends, side="right") - 1
        if num_windows:
            window_scores = probabilities[np.maximum(latest, 0)]
        else:
            window_scores = np.zeros(num_frames, dtype=np.float32)
        scores = np.where(latest >= 0, window_scores, self._last_probability)
        if num_windows:
            self._last_probability = float(probabilities[-1])
        return scores.astype(np.float32)


def _interface(session, model_path: str) -> str:
    """Return "window" or "sequence" for the form of a Silero model; raise ConfigError for another model."""
    inputs = {item.name: item for item in session.get_inputs()}
    outputs = [item.name for item in session.get_outputs()]
    if set(inputs) == set(SEQUENCE_INPUTS) and len(outputs) >= 3:
        shape = inputs["input"].shape
        if len(shape) != 2 or shape[1] != WINDOW_SAMPLES + CONTEXT_SAMPLES:
            raise ConfigError(
                f"VAD model {model_path} has an input of shape {list(shape)}; expected [sequence, {WINDOW_SAMPLES + CONTEXT_SAMPLES}]"
            )
        return "sequence"
    missing = [name for name in WINDOW_INPUTS if name not in inputs]
    if missing or len(outputs) < 2:
        found = ", ".join(f"{name}{list(item.shape)}" for name, item in inputs.items()) or "none"
        raise ConfigError(
            f"VAD model {model_path} has inputs {found} and {len(outputs)} outputs; expected a Silero VAD v5 model "
            f"with inputs input, state and sr (silero_vad.onnx of the silero-vad package) or input, h and c "
            f"(silero_vad_16k_sequence.onnx)"
        )
    state_shape = inputs["state"].shape
    if len(state_shape) != 3 or state_shape[0] != 2 or state_shape[2] != 128:
        raise ConfigError(f"VAD model {model_path} has a state input of shape {list(state_shape)}; expected [2, batch, 128]")
    return "window"


def _self_test_clips() -> tuple[np.ndarray, np.ndarray]:
    """Return 16 kHz int16 frames of a generated speech clip and of silence with faint noise."""
    from ...demo.synth import speech_signal

    speech = speech_signal([("silence", 0.3), ("speech", 2.0), ("silence", 0.3)], level_dbfs=-20.0, seed=0)
    quiet = np.random.default_rng(0).normal(0.0, 10 ** (-70 / 20), OUTPUT_SAMPLE_RATE * 2)

    def to_frames(signal: np.ndarray) -> np.ndarray:
        pcm = np.clip(np.rint(signal * 32767), -32768, 32767).astype(np.int16)
        usable = pcm.size - pcm.size % WINDOW_SAMPLES
        return pcm[:usable].reshape(-1, WINDOW_SAMPLES)

    return to_frames(speech), to_frames(quiet)


def check_model(model_path: str) -> str:
    """Load a Silero VAD model and run it on generated speech and silence; return a description or raise.

    Raises ConfigError for a missing file, a file that is not ONNX, a model
    with other inputs, one that rejects 16 kHz input or one that fails the
    self-test, and EnvironmentCheckError when onnxruntime is missing.
    """
    session = load_session(model_path)
    _interface(session, model_path)
    detector = SileroDetector(model_path, frame_ms=32)
    speech_frames, quiet_frames = _self_test_clips()
    try:
        speech_peak = float(np.max(detector.score(speech_frames)))
        detector.reset()
        quiet_peak = float(np.max(detector.score(quiet_frames)))
    except VadError as exc:
        raise ConfigError(f"VAD model {model_path} does not accept 16 kHz input: {exc}") from exc
    if speech_peak < SELF_TEST_MIN_SPEECH_PROBABILITY or quiet_peak > SELF_TEST_MAX_SILENCE_PROBABILITY:
        raise ConfigError(
            f"VAD model {model_path} failed the self-test: peak speech probability {speech_peak:.2f} on generated "
            f"speech (expected at least {SELF_TEST_MIN_SPEECH_PROBABILITY}) and {quiet_peak:.2f} on silence "
            f"(expected at most {SELF_TEST_MAX_SILENCE_PROBABILITY}); use silero_vad.onnx from the silero-vad package"
        )
    return f"Silero VAD {Path(model_path).name}"
