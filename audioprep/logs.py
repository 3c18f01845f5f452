"""Log sinks of a run: the per-run log file and records from worker processes."""

from __future__ import annotations

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
    """Re-emit records that worker processes put on a multiprocessing queue."""

    def __init__(self, context, run_id: int | None) -> None:
        self.queue = context.Queue()
        self.run_id = run_id
        self._thread = threading.Thread(target=self._pump, name="audioprep-worker-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Emit what is queued, then end the thread."""
        self.queue.put(None)
        self._thread.join(timeout)
        self.queue.close()
        self.queue.join_thread()

    def _pump(self) -> None:
        while True:
            try:
                item = self.queue.get()
            except (EOFError, OSError):
                return
            if item is None:
                return
            extra = dict(item.get("extra") or {})
            extra.setdefault("run_id", self.run_id)
            extra["worker_pid"] = item.get("process")
            message = item["message"]
            if item.get("traceback"):
                message = f"{message}\n{item['traceback'].rstrip()}"
            logger.bind(**extra).log(item["level"], message)
