"""The per-file job: decode, detect speech, cut and write segments.

`process_audio_sync` runs in a worker process. It takes and returns small
picklable values and never touches the database.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import unicodedata
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import log, worker_state
from .audio_io import PcmStream, check_source, file_checksum, finalize_file, fsync_directory, write_wav_temporary
from .config import OUTPUT_SAMPLE_RATE, PrepConfig
from .errors import OutputError, PrepError, counted, format_reason
from .faults import hook_items
from .segment import Segmenter, Span, frame_levels_dbfs
from .vad import FrameDetector, create_detector

SEGMENTS_DIRNAME = "segments"
FILES_PER_SHARD = 1000
MAX_SLUG_CHARS = 60
_detectors: dict[tuple, FrameDetector] = {}
_finalize_executor: ThreadPoolExecutor | None = None
_finalize_pid = 0


@dataclass(frozen=True)
class PrepTask:
    """One file to prepare: ids, paths and parameters, nothing else."""

    audio_file_id: int
    path: str
    output_dir: str
    config: PrepConfig
    run_id: int | None = None
    # Fault injection for tests (AUDIOPREP["TEST_HOOK"]); empty in normal runs.
    test_hook: str = ""
    # True when the file was never claimed before, so no earlier attempt
    # left segments or temporary files: the folder scans are skipped.
    # NOTE: if the database is recreated but the output folder kept, new
    # rows may reuse old ids, and old segment files with indices beyond the
    # new ones stay behind (no row or manifest line names them).
    fresh: bool = False
    # A file whose header announces at least this many seconds is decoded in
    # a helper process, so that it uses two cores; None when no core is idle.
    helper_min_seconds: float | None = None


@dataclass(frozen=True)
class SegmentRecord:
    """One written segment; times are seconds of the source recording."""

    index: int
    start: float
    end: float
    path: str
    peak_dbfs: float
    rms_dbfs: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class PrepResult:
    """Outcome of one file, small enough to cross the process boundary."""

    audio_file_id: int
    status: str
    reason: str = ""
    size_bytes: int | None = None
    checksum: str = ""
    container: str = ""
    codec: str = ""
    sample_rate: int | None = None
    channels: int | None = None
    duration: float | None = None
    flags: list[str] = field(default_factory=list)
    decode_warnings: list[str] = field(default_factory=list)
    segments: list[SegmentRecord] = field(default_factory=list)
    elapsed: float = 0.0
    worker_pid: int = 0


def slugify(text: str) -> str:
    """Return a lowercase ASCII slug of at most MAX_SLUG_CHARS characters."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:MAX_SLUG_CHARS].strip("-") or "audio"


def segment_dir(output_dir: str | Path, audio_file_id: int) -> Path:
    """Return the folder that contains the segments of one file."""
    return Path(output_dir) / SEGMENTS_DIRNAME / f"{audio_file_id // FILES_PER_SHARD:05d}"


def segment_prefix(audio_file_id: int) -> str:
    return f"{audio_file_id:08d}-"


def segment_path(output_dir: str | Path, audio_file_id: int, source_path: str, index: int) -> Path:
    """Return the output path of one segment.

    The name starts with the row id, so two files never share a name, is
    lowercase, so names never differ only by case, and stays far below the
    255-byte limit whatever the source name holds.
    """
    stem = Path(source_path).name.split(".")[0]
    name = f"{segment_prefix(audio_file_id)}{slugify(stem)}-{index:04d}.wav"
    return segment_dir(output_dir, audio_file_id) / name


def remove_segment_files(
    output_dir: str | Path, audio_file_id: int, keep: set[Path] | None = None, temporary_only: bool = False
) -> int:
    """Delete segment and temporary files of one file except `keep`; return how many."""
    folder = segment_dir(output_dir, audio_file_id)
    if not folder.is_dir():
        return 0
    prefix = segment_prefix(audio_file_id)
    removed = 0
    for entry in os.scandir(folder):
        name = entry.name
        owned = name.startswith("." + prefix) or (not temporary_only and name.startswith(prefix))
        if owned and Path(entry.path) not in (keep or ()):
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _detector_for(config: PrepConfig) -> FrameDetector:
    key = (config.vad_model, config.vad_model_sha256, config.vad_aggressiveness, config.frame_ms)
    detector = _detectors.get(key)
    if detector is None:
        detector = create_detector(config)
        _detectors[key] = detector
    detector.reset()
    return detector


def _levels(samples: np.ndarray) -> tuple[float, float]:
    """Return peak and RMS level of int16 samples in dBFS."""
    if samples.size == 0:
        return -100.0, -100.0
    values = samples.astype(np.float32) / 32768.0
    peak = float(np.max(np.abs(values)))
    rms = float(np.sqrt(np.mean(values * values)))
    return (
        round(20 * np.log10(peak), 2) if peak > 0 else -100.0,
        round(20 * np.log10(rms), 2) if rms > 0 else -100.0,
    )


class _SegmentWriter:
    """Keep the audio that open spans may need and write spans as they close."""

    def __init__(self, task: PrepTask, folder: Path) -> None:
        self.task = task
        self.folder = folder
        self.buffer = np.zeros(0, dtype=np.int16)
        self.buffer_start = 0
        self.records: list[SegmentRecord] = []
        # fsync and rename run on a background thread, overlapping the next
        # chunk's decoding; `wait()` collects them before the file is done.
        self._finalizing: list[Future] = []

    def append(self, samples: np.ndarray, retain_from: int) -> None:
        drop = max(0, min(retain_from - self.buffer_start, self.buffer.size))
        self.buffer = np.concatenate((self.buffer[drop:], samples))
        self.buffer_start += drop

    def write(self, spans: list[Span]) -> None:
        for span in spans:
            end = min(span.end, self.buffer_start + self.buffer.size)
            samples = self.buffer[span.start - self.buffer_start : end - self.buffer_start]
            if span.start < self.buffer_start or samples.size == 0:
                raise OutputError(f"internal error: span {span} is outside the retained audio")
            index = len(self.records)
            path = segment_path(self.task.output_dir, self.task.audio_file_id, self.task.path, index)
            if index == 0:
                self.folder.mkdir(parents=True, exist_ok=True)
            temporary = write_wav_temporary(path, samples)
            self._finalizing.append(_finalizer().submit(finalize_file, temporary, path))
            peak, rms = _levels(samples)
            self.records.append(
                SegmentRecord(
                    index=index,
                    start=round(span.start / OUTPUT_SAMPLE_RATE, 6),
                    end=round((span.start + samples.size) / OUTPUT_SAMPLE_RATE, 6),
                    path=str(path),
                    peak_dbfs=peak,
                    rms_dbfs=rms,
                )
            )


    def wait(self) -> None:
        """Wait until every segment has its final name; raise the first OutputError."""
        pending, self._finalizing = self._finalizing, []
        errors = [future.exception() for future in pending]
        for error in errors:
            if error is not None:
                raise error


def _finalizer() -> ThreadPoolExecutor:
    """Return this process's fsync thread pool.

    A child made by fork inherits the parent's executor object but not its
    thread, so the pool is rebuilt whenever the process id changes.
    """
    global _finalize_executor, _finalize_pid
    if _finalize_executor is None or _finalize_pid != os.getpid():
        _finalize_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audioprep-fsync")
        _finalize_pid = os.getpid()
    return _finalize_executor


def _run_pipeline(task: PrepTask, result: PrepResult, deferred: list | None = None) -> None:
    """Prepare one file into `result`.

    With `deferred`, a fresh file does not wait for its segments' fsync:
    it appends what is left to do, and `process_batch_sync` finishes it
    after the other files of the batch.
    """
    config = task.config
    result.size_bytes = check_source(task.path)
    result.checksum = file_checksum(task.path)
    folder = segment_dir(task.output_dir, task.audio_file_id)
    # Segments of an earlier attempt stay until this one has written its own,
    # so every final name always contains a complete file. A scan reads the
    # whole shard folder (up to FILES_PER_SHARD files' segments), so files
    # that no earlier attempt touched skip it.
    if not task.fresh:
        remove_segment_files(task.output_dir, task.audio_file_id, temporary_only=True)
    detector = _detector_for(config)
    segmenter = Segmenter(config)
    writer = _SegmentWriter(task, folder)
    frame_samples = config.frame_samples
    leftover = np.zeros(0, dtype=np.int16)
    total_samples = 0
    try:
        with PcmStream(task.path, config.channel, task.helper_min_seconds) as stream:
            for chunk in stream:
                total_samples += chunk.size
                writer.append(chunk, segmenter.retain_from)
                samples = np.concatenate((leftover, chunk)) if leftover.size else chunk
                usable = samples.size - samples.size % frame_samples
                leftover = samples[usable:]
                if usable == 0:
                    continue
                frames = samples[:usable].reshape(-1, frame_samples)
                writer.write(segmenter.push(detector.score(frames), frame_levels_dbfs(frames)))
            writer.write(segmenter.finish())
    except BaseException:
        writer.wait()
        raise
    defer = deferred is not None and task.fresh
    if not defer:
        writer.wait()
    info = stream.info
    result.container = info.container
    result.codec = info.codec
    result.sample_rate = info.sample_rate
    result.channels = info.channels
    result.duration = round(info.duration, 6)
    result.decode_warnings = list(info.decode_warnings)
    if info.header_mismatch:
        result.flags.append("header_mismatch")
    if info.num_decode_errors:
        result.flags.append("decode_warnings")
    result.segments = writer.records
    if not task.fresh:
        remove_segment_files(task.output_dir, task.audio_file_id, keep={Path(record.path) for record in writer.records})
    if writer.records:
        if defer:
            deferred.append((task, result, writer, folder))
        else:
            fsync_directory(folder)
    result.status = "done" if writer.records else "no_speech"
    log.logger.debug(
        "file {} decoded{}: {} {} {} Hz {} ch, {:.3f} s, {} output samples, {}",
        task.audio_file_id,
        " by a helper process" if stream.used_helper else "",
        info.container,
        info.codec,
        info.sample_rate,
        info.channels,
        info.duration,
        total_samples,
        counted(len(writer.records), "segment"),
    )


def process_audio_sync(task: PrepTask, deferred: list | None = None) -> PrepResult:
    """Prepare one file and return a plain record of the outcome.

    Every exception is caught and turned into a `failed` result with a
    `<category>: <detail>` reason, so nothing but this record crosses the
    process boundary. Segment files of a file that does not end `done` are
    removed.
    """
    started = time.perf_counter()
    result = PrepResult(audio_file_id=task.audio_file_id, status="failed", worker_pid=os.getpid())
    worker_state.mark(task.audio_file_id)
    try:
        with _test_hook_applied(task):
            _process(task, result, deferred)
    except Exception as exc:  # the record must cross the process boundary, never an exception
        result.status = "failed"
        result.segments = []
        result.reason = format_reason("internal", f"unexpected {type(exc).__name__}: {exc}")
    finally:
        worker_state.mark(0)
    result.elapsed = round(time.perf_counter() - started, 6)
    return result


def process_batch_sync(tasks: list[PrepTask]) -> list[PrepResult]:
    """Prepare several files in turn, as `process_audio_sync` does each.

    Short files go to a worker in batches, so the round trip to the pool
    is paid once per batch instead of once per file. The fsync of one
    file's segments overlaps the next file's work: every result is
    returned only after all segments of the batch have their final names.
    """
    deferred: list = []
    results = [process_audio_sync(task, deferred) for task in tasks]
    folders = set()
    for task, result, writer, folder in deferred:
        try:
            writer.wait()
            folders.add(folder)
        except Exception as exc:  # like process_audio_sync, only a result may leave the worker
            result.status = "failed"
            result.reason = exc.reason() if isinstance(exc, PrepError) else format_reason("internal", f"unexpected {type(exc).__name__}: {exc}")
            result.segments = []
            log.logger.debug("file {} failed: {}", task.audio_file_id, result.reason)
            try:
                remove_segment_files(task.output_dir, task.audio_file_id)
            except OSError as cleanup_error:
                log.logger.warning("file {}: cannot remove its segments: {}", task.audio_file_id, cleanup_error)
    for folder in folders:
        fsync_directory(folder)
    return results


@contextlib.contextmanager
def _test_hook_applied(task: PrepTask):
    if not task.test_hook:
        yield
        return
    apply_test_hook(task)
    with _vad_fault(task):
        yield


def apply_test_hook(task: PrepTask) -> None:
    """Inject a fault before the file is processed, for failure tests.

    The hook is a comma-separated list of `action=argument` items:
    `sleep=SECONDS` delays every file; `kill=TEXT` sends SIGKILL to this
    process and `abort=TEXT` calls os.abort() when the source path contains
    TEXT (a simulated out-of-memory kill or native crash); `kill_mid_log=TEXT`
    sends SIGKILL after this process has taken the write lock of its log queue,
    as a kill in the middle of sending a log record would; `vad_error=TEXT`
    makes webrtcvad raise on the third frame of such a file (see `_vad_fault`).
    `helper_pause=SECONDS` is read by the decoder helper process instead
    (see `decode_helper._apply_test_hook`).
    """
    import signal

    for action, argument in hook_items(task.test_hook):
        if action == "sleep":
            time.sleep(float(argument))
        elif action == "kill" and argument and argument in task.path:
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "abort" and argument and argument in task.path:
            os.abort()
        elif action == "kill_mid_log" and argument and argument in task.path:
            # NOTE: `_wlock` is CPython's private writer lock of a
            # multiprocessing.Queue. A record send acquires it and releases it after the write.
            queue = log.worker_queue()
            if queue is not None and getattr(queue, "_wlock", None) is not None:
                queue._wlock.acquire()
            os.kill(os.getpid(), signal.SIGKILL)


class _FailingVad:
    """A webrtcvad.Vad stand-in that raises webrtcvad's own error on the third frame."""

    def __init__(self, vad) -> None:
        self._vad = vad
        self._calls = 0

    def is_speech(self, frame: bytes, sample_rate: int) -> bool:
        self._calls += 1
        if self._calls == 3:
            raise Exception("Error while processing frame")
        return self._vad.is_speech(frame, sample_rate)


@contextlib.contextmanager
def _vad_fault(task: PrepTask):
    """Swap webrtcvad.Vad for `_FailingVad` while a file named by `vad_error=TEXT` is processed."""
    targets = [argument for action, argument in hook_items(task.test_hook) if action == "vad_error" and argument]
    if not any(target in task.path for target in targets):
        yield
        return
    import types

    from .vad import webrtc

    original = webrtc.webrtcvad
    webrtc.webrtcvad = types.SimpleNamespace(Vad=lambda mode: _FailingVad(original.Vad(mode)))
    try:
        yield
    finally:
        webrtc.webrtcvad = original


def _process(task: PrepTask, result: PrepResult, deferred: list | None = None) -> None:
    with log.logger.contextualize(run_id=task.run_id, audio_file_id=task.audio_file_id):
        try:
            _run_pipeline(task, result, deferred)
        except PrepError as exc:
            result.reason = exc.reason()
            log.logger.opt(exception=exc).debug("file {} failed: {}", task.audio_file_id, result.reason)
        except MemoryError:
            result.reason = format_reason("worker", "out of memory while processing the file")
        except Exception as exc:
            result.reason = format_reason("internal", f"unexpected {type(exc).__name__}: {exc}")
            log.logger.exception("file {} failed with an unexpected error", task.audio_file_id)
        # A fresh file that ends without speech wrote nothing to remove.
        if result.status != "done" and not (task.fresh and result.status == "no_speech"):
            result.segments = []
            try:
                remove_segment_files(task.output_dir, task.audio_file_id)
            except OSError as exc:
                log.logger.warning("file {}: cannot remove old segments: {}", task.audio_file_id, exc)
