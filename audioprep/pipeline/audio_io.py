"""Decode any common format to 16 kHz mono 16-bit PCM, and write WAV files.

Decoding uses PyAV, whose wheels ship the FFmpeg libraries, so no system
package is needed. The container is probed from the content, never from the
file name. Audio is produced as a stream of chunks, so memory does not grow
with the duration of the recording.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import OUTPUT_SAMPLE_RATE
from .errors import DecodeError, EmptyInputError, EnvironmentCheckError, InputIOError, OutputError
from .wav_reader import WavLayout, header_duration, iter_wav, parse_wav

try:
    import av
    import av.logging
except ImportError as exc:  # pragma: no cover - exercised through check_decoder()
    av = None
    _AV_IMPORT_ERROR = exc
else:
    _AV_IMPORT_ERROR = None
    # FFmpeg messages are captured per file (av.logging.Capture) and turned
    # into reasons and decode warnings; without a level PyAV drops them.
    av.logging.set_level(av.logging.WARNING)
    # By default PyAV drops a message equal to the previous one, so a second
    # broken file with the same fault would get a different reason.
    av.logging.set_skip_repeated(False)

with warnings.catch_warnings():
    # pydub warns at import when no ffmpeg program is on PATH. It is only used
    # here to write WAV files, which needs no external program.
    warnings.simplefilter("ignore", RuntimeWarning)
    from pydub import AudioSegment

RAW_PCM_SUFFIXES = (".pcm", ".raw", ".s16", ".s16le")
# Kinds of the items `PcmStream.source_items` yields.
MONO_BLOCK = "mono"
PCM_CHUNK = "pcm"
FLUSH = "flush"

# Decoded chunks are gathered to about this many output samples before they
# are handed on, which keeps per-chunk Python overhead low.
CHUNK_SAMPLES = 2 * OUTPUT_SAMPLE_RATE
MAX_DECODE_WARNINGS_KEPT = 5


@dataclass
class SourceInfo:
    """Properties of one source file, as probed and decoded."""

    container: str = ""
    codec: str = ""
    sample_rate: int = 0
    channels: int = 0
    # Seconds of audio actually decoded, not the duration the header claims.
    duration: float = 0.0
    header_duration: float | None = None
    decode_warnings: list[str] = field(default_factory=list)
    num_decode_errors: int = 0

    # Seconds of audio a WAV header's data size announces, when it states one.
    wav_header_duration: float | None = None

    @property
    def header_mismatch(self) -> bool:
        if self.duration <= 0:
            return False
        for claimed in (self.header_duration, self.wav_header_duration):
            if claimed is not None and abs(claimed - self.duration) > max(0.1, 0.02 * self.duration):
                return True
        return False


def check_decoder() -> str:
    """Decode a generated WAV in memory; return the decoder's version or raise."""
    if av is None:
        raise EnvironmentCheckError(
            f"decoder not found: the 'av' package (PyAV) cannot be imported ({_AV_IMPORT_ERROR}); "
            "install it with 'pip install av'"
        )
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(np.zeros(800, dtype="<i2").tobytes())
    buffer.seek(0)
    try:
        with av.open(buffer) as container:
            num_samples = sum(frame.samples for frame in container.decode(audio=0))
    except Exception as exc:
        raise EnvironmentCheckError(f"decoder not usable: PyAV {av.__version__} failed to decode a test WAV: {exc}") from exc
    if num_samples != 800:
        raise EnvironmentCheckError(f"decoder not usable: decoded {num_samples} of 800 test samples")
    return f"PyAV {av.__version__}"


def check_source(path: str) -> int:
    """Return the size of a readable regular file, or raise a categorised error."""
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        if os.path.islink(path):
            raise InputIOError(f"not found: dangling symbolic link to {os.readlink(path)!r}") from exc
        raise InputIOError("not found") from exc
    except PermissionError as exc:
        raise InputIOError("permission denied") from exc
    except OSError as exc:
        raise InputIOError(f"cannot stat file: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise InputIOError(f"not a regular file: the path is {kind}")
    if not os.access(path, os.R_OK):
        raise InputIOError("permission denied")
    if info.st_size == 0:
        raise EmptyInputError("0 bytes")
    return info.st_size


def file_checksum(path: str) -> str:
    """Return the SHA-256 of a file's bytes as hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError as exc:
        raise InputIOError("not found") from exc
    except PermissionError as exc:
        raise InputIOError("permission denied") from exc
    except OSError as exc:
        raise InputIOError(f"read failed: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def _ffmpeg_detail(exc: Exception, logs: list) -> str:
    """Return the most useful line of an FFmpeg failure, without its banner."""
    messages = [message.strip() for level, _name, message in logs if level <= av.logging.ERROR and message.strip()]
    if messages:
        return messages[-1]
    text = str(exc)
    if "] " in text and text.startswith("[Errno"):
        text = text.split("] ", 1)[1]
    return text.split(": '", 1)[0]


def _open_container(path: str, logs: list):
    try:
        return av.open(path, metadata_errors="ignore")
    except FileNotFoundError as exc:
        raise InputIOError("not found") from exc
    except PermissionError as exc:
        raise InputIOError("permission denied") from exc
    except IsADirectoryError as exc:
        raise InputIOError("not a regular file: the path is a directory") from exc
    except av.error.FFmpegError as exc:
        detail = _ffmpeg_detail(exc, logs)
        if path.lower().endswith(RAW_PCM_SUFFIXES):
            raise DecodeError(f"headerless PCM not supported ({detail})") from exc
        if "Invalid data found" in detail:
            raise DecodeError("not an audio file (no known container or codec matches its content)") from exc
        raise DecodeError(detail) from exc
    except (OSError, ValueError, IndexError, KeyError, RuntimeError) as exc:
        raise DecodeError(f"cannot open: {type(exc).__name__}: {exc}") from exc


class PcmStream:
    """Iterate a source file as 16 kHz mono int16 chunks.

    Use as a context manager. `info` is filled while iterating and is
    complete once the iterator is exhausted.
    """

    def __init__(self, path: str, channel: str = "mix", helper_min_seconds: float | None = None) -> None:
        self.path = path
        self.channel = channel
        # A file whose header announces at least this many seconds is decoded
        # by a helper process, while this process resamples and the caller
        # detects speech. The output is the same. None turns the helper off.
        self.helper_min_seconds = helper_min_seconds
        self._helper = None
        self.info = SourceInfo()
        self._container = None
        self._log_capture = None
        self._logs: list = []
        # Set when the file is a 16 kHz PCM WAV that is read without FFmpeg.
        self._wav_layout: WavLayout | None = None
        self._frame_resampler = None

    def __enter__(self) -> PcmStream:
        if av is None:
            raise EnvironmentCheckError(f"decoder not found: the 'av' package cannot be imported ({_AV_IMPORT_ERROR})")
        try:
            size = os.path.getsize(self.path)
        except OSError:
            size = 0
        layout = parse_wav(self.path, size) if size else None
        if layout is not None and layout.sample_rate == OUTPUT_SAMPLE_RATE:
            self._wav_layout = layout
            return self
        self._log_capture = av.logging.Capture(local=True)
        self._logs = self._log_capture.__enter__()
        self._container = _open_container(self.path, self._logs)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._helper is not None:
            self._helper.close()
        if self._container is not None:
            self._container.close()
        if self._log_capture is not None:
            self._log_capture.__exit__(*exc_info)

    @property
    def used_helper(self) -> bool:
        """Whether a helper process decoded the file."""
        return self._helper is not None

    def _select_stream(self):
        container = self._container
        info = self.info
        info.container = container.format.name
        if not container.streams.audio:
            if info.container.endswith("_pipe"):
                # FFmpeg reads still images with its *_pipe formats (png_pipe, jpeg_pipe...).
                raise DecodeError(f"no audio stream (the file is a {info.container.removesuffix('_pipe').upper()} image)")
            kinds = sorted({stream.type for stream in container.streams})
            found = f" (found {', '.join(kinds)})" if kinds else ""
            raise DecodeError(f"no audio stream{found}")
        stream = container.streams.audio[0]
        codec = stream.codec_context
        info.codec = codec.name
        info.sample_rate = int(codec.sample_rate or stream.rate or 0)
        info.channels = int(codec.channels or 0)
        if stream.duration is not None and stream.time_base is not None:
            info.header_duration = float(stream.duration * stream.time_base)
        elif container.duration:
            info.header_duration = container.duration / 1_000_000
        if info.sample_rate <= 0:
            raise DecodeError(f"invalid sample rate {info.sample_rate} in {info.codec} stream")
        if info.container == "wav":
            info.wav_header_duration = header_duration(self.path)
        return stream

    def _frames(self, stream) -> Iterator:
        """Yield decoded frames, skipping packets the decoder rejects."""
        info = self.info
        try:
            packets = self._container.demux(stream)
            for packet in packets:
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError as exc:
                    info.num_decode_errors += 1
                    if len(info.decode_warnings) < MAX_DECODE_WARNINGS_KEPT:
                        info.decode_warnings.append(_ffmpeg_detail(exc, self._logs))
                    continue
                yield from frames
        except av.error.FFmpegError as exc:
            raise DecodeError(_ffmpeg_detail(exc, self._logs)) from exc
        except (MemoryError, ValueError, IndexError, KeyError, RuntimeError, OSError) as exc:
            raise DecodeError(f"{type(exc).__name__}: {exc}") from exc

    def _to_mono(self, interleaved: np.ndarray, channels: int) -> np.ndarray:
        """Return one channel, or the mean of all, from interleaved float samples."""
        if channels == 1:
            return interleaved
        frames = interleaved.reshape(-1, channels)
        if self.channel == "left":
            return frames[:, 0]
        if self.channel == "right":
            return frames[:, 1]
        return frames.mean(axis=1, dtype=np.float32)

    def _to_int16(self, mono: np.ndarray) -> np.ndarray:
        scaled = np.rint(mono * 32768.0)
        np.clip(scaled, -32768, 32767, out=scaled)
        return scaled.astype(np.int16)

    def _chunk(self, pending: list[np.ndarray], channels: int) -> np.ndarray:
        interleaved = pending[0] if len(pending) == 1 else np.concatenate(pending)
        return self._to_int16(self._to_mono(interleaved, channels))

    def _iter_wav(self, layout: WavLayout) -> Iterator[np.ndarray]:
        info = self.info
        info.container = "wav"
        info.codec = layout.codec
        info.sample_rate = layout.sample_rate
        info.channels = layout.channels
        info.wav_header_duration = header_duration(self.path)
        num_frames = 0
        for mono, interleaved in iter_wav(self.path, layout, CHUNK_SAMPLES):
            if mono is not None:
                num_frames += mono.size
                yield mono
            else:
                num_frames += interleaved.size // layout.channels
                yield self._chunk([interleaved], layout.channels)
        info.duration = num_frames / layout.sample_rate
        if num_frames == 0:
            raise EmptyInputError("no samples")

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._wav_layout is not None:
            yield from self._iter_wav(self._wav_layout)
            return
        stream = self._select_stream()
        if self.helper_min_seconds is not None and (self.info.header_duration or 0.0) >= self.helper_min_seconds:
            items = self._helper_items()
        else:
            items = self.source_items(stream)
        # libswresample's default filter attenuates content above the output
        # Nyquist frequency by more than 60 dB.
        resampler = av.AudioResampler(format="flt", layout="mono", rate=OUTPUT_SAMPLE_RATE)
        for kind, rate, samples in items:
            if kind == MONO_BLOCK:
                joined = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
                joined.sample_rate = rate
                yield from self._converted(resampler, joined)
            elif kind == PCM_CHUNK:
                yield samples
            else:
                yield from self._converted(resampler, None)

    def source_items(self, stream) -> Iterator[tuple[str, int, np.ndarray | None]]:
        """Yield the decoded audio of `stream` as (kind, rate, samples) items, in order.

        Decoded frames are short (20-90 ms), and each call into PyAV's
        resampler costs more than the resampling itself. So frames are
        gathered into blocks of about CHUNK_SAMPLES output samples, and each
        block is mixed down (or its channel taken) here and resampled by
        the consumer in one call: a MONO_BLOCK item. Frames of a sample format
        numpy cannot read come out resampled already, as PCM_CHUNK items.
        One FLUSH item marks where the consumer flushes its resampler. Fills
        `info` and raises as the file is read.
        """
        block: list = []
        block_samples = 0
        block_key = None
        decoded_seconds = 0.0
        for frame in self._frames(stream):
            rate = frame.sample_rate
            if not rate:
                continue
            key = (frame.format.name, frame.layout.name, rate)
            if block and key != block_key:
                yield from self._block_items(block, block_key)
                block, block_samples = [], 0
            block_key = key
            block.append(frame)
            block_samples += frame.samples
            decoded_seconds += frame.samples / rate
            if block_samples * OUTPUT_SAMPLE_RATE >= CHUNK_SAMPLES * rate:
                yield from self._block_items(block, block_key)
                block, block_samples = [], 0
        if block:
            yield from self._block_items(block, block_key)
        yield FLUSH, 0, None
        if self._frame_resampler is not None:
            for chunk in self._converted(self._frame_resampler, None):
                yield PCM_CHUNK, OUTPUT_SAMPLE_RATE, chunk
        self.info.duration = decoded_seconds
        if decoded_seconds <= 0:
            if self.info.num_decode_errors:
                raise DecodeError(f"no decodable audio: {self.info.decode_warnings[0]}")
            raise EmptyInputError("no samples")

    def _block_items(self, frames: list, key: tuple) -> Iterator[tuple[str, int, np.ndarray]]:
        """Yield the item, or items, for consecutive frames of one format, layout and rate."""
        mono = self._mono_samples(frames, key[0])
        if mono is not None:
            yield MONO_BLOCK, key[2], mono
            return
        # A sample format numpy cannot read: let FFmpeg convert frame by
        # frame, keeping every channel, and mix down after resampling.
        if self._frame_resampler is None:
            self._frame_resampler = av.AudioResampler(format="flt", layout=None, rate=OUTPUT_SAMPLE_RATE)
        for frame in frames:
            frame.pts = None
            for chunk in self._converted(self._frame_resampler, frame):
                yield PCM_CHUNK, OUTPUT_SAMPLE_RATE, chunk

    def _helper_items(self) -> Iterator[tuple[str, int, np.ndarray | None]]:
        """Yield the items of `source_items`, decoded by a helper process on another core."""
        from .decode_helper import HelperStream

        self._helper = HelperStream(self.path, self.channel)
        yield from self._helper.items(self.info)

    def _mono_samples(self, frames: list, format_name: str) -> np.ndarray | None:
        """Return the chosen channel, or the mean of all, of `frames` as float32 in [-1, 1).

        Mixing before resampling halves the resampler's work for stereo and
        gives the same result up to float rounding, because both are linear.
        Returns None for a sample format without a numpy type.
        """
        planar = format_name.endswith("p")
        kind = _SAMPLE_KINDS.get(format_name[:-1] if planar else format_name)
        if kind is None:
            return None
        dtype, offset, scale = kind
        channels = frames[0].layout.nb_channels
        if planar:
            planes = [
                np.concatenate([np.frombuffer(frame.planes[i], dtype, frame.samples) for frame in frames])
                for i in range(channels)
            ]
        else:
            interleaved = np.concatenate([np.frombuffer(frame.planes[0], dtype, frame.samples * channels) for frame in frames])
            planes = [interleaved[i::channels] for i in range(channels)]
        if self.channel == "left" or channels == 1:
            mixed = planes[0].astype(np.float32)
        elif self.channel == "right":
            mixed = planes[1].astype(np.float32)
        else:
            mixed = planes[0].astype(np.float32)
            for plane in planes[1:]:
                mixed += plane
            mixed /= channels
        if offset:
            mixed -= offset
        if scale != 1.0:
            mixed *= np.float32(scale)
        return mixed

    def _converted(self, resampler, frame) -> Iterator[np.ndarray]:
        try:
            converted = resampler.resample(frame)
        except (av.error.FFmpegError, ValueError) as exc:
            # PyAV's resampler (checked in 18.1) raises ValueError for a frame
            # whose layout differs from the first frame's.
            raise DecodeError(f"resampling failed: {_ffmpeg_detail(exc, self._logs)}") from exc
        for out in converted:
            if out.samples:
                yield self._chunk([out.to_ndarray().reshape(-1)], out.layout.nb_channels)


# numpy type, offset and scale that map FFmpeg's packed sample formats to
# floats in [-1, 1), as libswresample converts them; planar ones add a "p".
_SAMPLE_KINDS = {
    "u8": (np.uint8, 128.0, 1 / 128),
    "s16": (np.int16, 0.0, 1 / 32768),
    "s32": (np.int32, 0.0, 1 / 2147483648),
    "flt": (np.float32, 0.0, 1.0),
    "dbl": (np.float64, 0.0, 1.0),
}


def decode_to_pcm(path: str, channel: str = "mix") -> tuple[np.ndarray, SourceInfo]:
    """Decode a whole file to one int16 array; for tests and small files."""
    with PcmStream(path, channel) as stream:
        chunks = list(stream)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return samples, stream.info


def write_wav_temporary(path: Path, samples: np.ndarray) -> Path:
    """Write 16 kHz mono 16-bit PCM to a temporary name beside `path`; return that name.

    `finalize_file` makes it durable and gives it its final name.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    segment = AudioSegment(
        data=np.ascontiguousarray(samples, dtype="<i2").tobytes(),
        sample_width=2,
        frame_rate=OUTPUT_SAMPLE_RATE,
        channels=1,
    )
    try:
        with open(temporary, "wb") as stream:
            segment.export(stream, format="wav")
    except OSError as exc:
        _discard(temporary)
        raise _output_error(exc, path) from exc
    return temporary


def finalize_file(temporary: Path, path: Path) -> None:
    """Fsync `temporary` and rename it to `path`, so `path` is complete or absent, even after a crash."""
    try:
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        _discard(temporary)
        raise _output_error(exc, path) from exc


def write_wav_atomic(path: Path, samples: np.ndarray) -> None:
    """Write 16 kHz mono 16-bit PCM to `path` through a fsynced temporary file."""
    finalize_file(write_wav_temporary(path, samples), path)


def _discard(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _output_error(exc: OSError, path: Path) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"no space left on device writing {path}")
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def fsync_directory(path: Path) -> None:
    """Make renames inside `path` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
