"""Log sinks of a run: the per-run log file and records from worker processes."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from loguru import logger

LOG_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {extra[ids]} | {message}\n{exception}"


def format_record(record) -> str:
    """Loguru format function: prefix each line with run, file and process ids."""
    extra = record["extra"]
    parts = []
    if extra.get("run_id") is not None:
        parts.append(f"run={extra['run_id']}")
    if extra.get("audio_file_id") is not None:
        parts.append(f"file={extra['audio_file_id']}")
    parts.append(f"pid={extra.get('worker_pid') or record['process'].id}")
    extra["ids"] = " ".join(parts)
    return LOG_FORMAT


def add_run_log(path: Path, run_id: int, level: str = "DEBUG") -> int:
    """Add a file sink that receives every record bound to `run_id`; return its id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return logger.add(
        path,
        level=level,
        format=format_record,
        filter=lambda record: record["extra"].get("run_id") == run_id,
        enqueue=False,
        diagnose=False,
        backtrace=False,
        encoding="utf-8",
    )


class WorkerLogForwarder:
    """Re-emit the log records that the worker processes of one pool send.

    Every pool gets its own forwarder and queue, and the parent never writes
    to the queue. A worker killed while it sends a record leaves the queue's
    write lock taken, and may leave half a record in the pipe. Any process
    that then writes to that queue blocks forever, at the latest when it
    exits and flushes its queue.
    """

    POLL_SECONDS = 0.05

    def __init__(self, context, run_id: int | None) -> None:
        self.queue = context.Queue()
        self.run_id = run_id
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="audioprep-worker-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Emit what is queued, then end the thread; return False when it did not end within `timeout` seconds.

        The thread stops at the first moment the queue is empty, so stop it
        after the pool's processes have exited. A thread that did not end is
        blocked on half a record from a killed worker. It is a daemon
        thread, and its queue is left open, so the descriptor it reads is
        not reused while it waits.
        """
        self._stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self.queue.close()
        return True

    def _pump(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=self.POLL_SECONDS)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            except (EOFError, OSError):
                return
            except Exception as exc:  # the rest of a record cut short by a killed worker
                logger.bind(run_id=self.run_id).warning(
                    "reading worker log records failed ({}: {}); the rest of this pool's records are lost", type(exc).__name__, exc
                )
                return
            extra = dict(item.get("extra") or {})
            extra.setdefault("run_id", self.run_id)
            extra["worker_pid"] = item.get("process")
            message = item["message"]
            if item.get("traceback"):
                message = f"{message}\n{item['traceback'].rstrip()}"
            logger.bind(**extra).log(item["level"], message)
