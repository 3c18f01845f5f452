"""Decode a long file in a helper process, so that two cores work on it.

A worker that prepares a long file while a core is idle starts
`python -m audioprep.pipeline.decode_helper PATH CHANNEL PARENT_PID`. The
helper demuxes, decodes and mixes down the file (`PcmStream.source_items`)
and writes each item to its standard output. The worker resamples the
blocks with its own resampler and detects speech meanwhile, so the 16 kHz
stream is identical to a decode in one process.

Each message is a header (kind, sample rate, payload size) and a payload:
samples in native byte order, or a pickled info record or exception.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import PrepError
from .faults import hook_items

HEADER = struct.Struct("<cIQ")
_MONO = b"M"
_PCM = b"P"
_FLUSH = b"F"
_INFO = b"I"
_ERROR = b"E"
_DONE = b"D"
# A Linux pipe buffer is 64 KiB by default. A larger one moves a 2-second block
# with fewer context switches, and 1 MiB is the default limit for
# unprivileged processes (/proc/sys/fs/pipe-max-size, see pipe(7)).
PIPE_BYTES = 1 << 20
# Fields of SourceInfo that only decoding fills. The worker probes the rest itself.
DECODED_FIELDS = ("duration", "decode_warnings", "num_decode_errors")
STDERR_TAIL_CHARS = 200
# While a helper decodes, the worker returns freed heap memory to the system
# after every TRIM_EVERY_BLOCKS blocks (4 s of audio). Without it, glibc's heap
# fragmented: a worker reached 80-93 MiB on a 2-hour file, against 71 MiB on
# a 2-minute one, and 75 MiB with the trim. Files decoded in one process do
# not trim, because there it cost 7-19 % of the time on one-minute files.
TRIM_EVERY_BLOCKS = 2
# glibc's malloc_trim, looked up on first use. False where the C library lacks it.
_malloc_trim = None


class HelperDiedError(PrepError):
    """Error raised when the decoder helper process ends before the end of the file, which is then retried."""

    category = "worker"


class HelperStream:
    """Worker side of the helper: a started helper process and a reader of its items."""

    def __init__(self, path: str, channel: str) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(part for part in (package_root, env.get("PYTHONPATH", "")) if part)
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, path, channel, str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
        )
        try:
            import fcntl

            fcntl.fcntl(self._process.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except (ImportError, AttributeError, OSError):
            pass

    def items(self, info) -> Iterator[tuple[str, int, np.ndarray | None]]:
        """Yield the helper's items as `PcmStream.source_items` does, and fill the decoded fields of `info`."""
        from .audio_io import FLUSH, MONO_BLOCK, PCM_CHUNK

        blocks = 0
        while True:
            header = self._read(HEADER.size)
            kind, rate, size = HEADER.unpack(header)
            if kind == _MONO:
                yield MONO_BLOCK, rate, self._read_into(np.empty(size // 4, np.float32))
                blocks += 1
                if blocks % TRIM_EVERY_BLOCKS == 0:
                    _release_free_memory()
            elif kind == _PCM:
                yield PCM_CHUNK, rate, self._read_into(np.empty(size // 2, np.int16))
            elif kind == _FLUSH:
                yield FLUSH, 0, None
            elif kind == _INFO:
                for name, value in pickle.loads(self._read(size)).items():
                    setattr(info, name, value)
            elif kind == _ERROR:
                raise pickle.loads(self._read(size))
            elif kind == _DONE:
                return
            else:
                raise HelperDiedError(f"decoder helper process sent an unknown message kind {kind!r}")

    def close(self) -> None:
        """Kill the helper if it is still running, and reap it."""
        process = self._process
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.wait()
        self._stderr.close()

    def _read(self, size: int) -> bytes:
        data = self._process.stdout.read(size)
        if len(data) != size:
            raise self._died()
        return data

    def _read_into(self, samples: np.ndarray) -> np.ndarray:
        view = memoryview(samples).cast("B")
        size = samples.nbytes
        done = 0
        while done < size:
            count = self._process.stdout.readinto(view[done:])
            if not count:
                raise self._died()
            done += count
        return samples

    def _died(self) -> HelperDiedError:
        process = self._process
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if code < 0:
            ending = f"terminated by signal {-code} ({signal.Signals(-code).name})"
        else:
            ending = f"exited with status {code}"
        self._stderr.seek(0)
        lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        tail = f": {lines[-1][-STDERR_TAIL_CHARS:]}" if lines else ""
        return HelperDiedError(f"decoder helper process {ending} before the end of the file{tail}")


def _release_free_memory() -> None:
    """Return the free parts of the heap to the system with glibc's malloc_trim; do nothing without glibc."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


def _send(out, kind: bytes, rate: int = 0, payload=b"") -> None:
    size = payload.nbytes if isinstance(payload, np.ndarray) else len(payload)
    out.write(HEADER.pack(kind, rate, size))
    if size:
        out.write(memoryview(payload).cast("B") if isinstance(payload, np.ndarray) else payload)


def _picklable(exc: BaseException) -> bytes:
    try:
        return pickle.dumps(exc)
    except Exception:  # an exception from a C extension may not pickle
        return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))


def run(path: str, channel: str, out) -> None:
    """Decode `path` and write its items to the binary stream `out`."""
    from .audio_io import FLUSH, MONO_BLOCK, PcmStream

    stream = PcmStream(path, channel)
    try:
        with stream:
            for kind, rate, samples in stream.source_items(stream._select_stream()):
                if kind == MONO_BLOCK:
                    _send(out, _MONO, rate, samples)
                elif kind == FLUSH:
                    _send(out, _FLUSH)
                else:
                    _send(out, _PCM, rate, samples)
    except BrokenPipeError:
        raise
    except Exception as exc:
        error = exc
    else:
        error = None
    _send(out, _INFO, 0, pickle.dumps({name: getattr(stream.info, name) for name in DECODED_FIELDS}))
    if error is None:
        _send(out, _DONE)
    else:
        _send(out, _ERROR, 0, _picklable(error))
    out.flush()


def _apply_test_hook(test_hook: str) -> None:
    """Sleep before decoding when the test hook contains `helper_pause=SECONDS`.

    The helper runs without Django settings, so it reads the hook from the
    AUDIOPREP_TEST_HOOK environment variable, which the worker passes on.
    """
    for action, argument in hook_items(test_hook):
        if action == "helper_pause":
            time.sleep(float(argument))


def main(argv: list[str]) -> int:
    path, channel, parent = argv[1], argv[2], int(argv[3])
    from .worker import die_with_parent

    die_with_parent(parent)
    # Like the workers, ignore Ctrl-C: the run decides when a file stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _apply_test_hook(os.environ.get("AUDIOPREP_TEST_HOOK", ""))
    # A buffered writer writes each payload whole, which a raw pipe write may not.
    out = os.fdopen(sys.stdout.fileno(), "wb", closefd=False)
    try:
        run(path, channel, out)
    except BrokenPipeError:
        # The worker stopped reading (its file failed or the run stopped).
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
