"""The logger pipeline code writes to, and its hand-over to worker processes.

Worker processes started with spawn or forkserver import loguru afresh, with
its default stderr sink. `install_worker_logging` replaces that sink with one
that sends each record to the parent through a multiprocessing queue; the
parent re-emits it through its own sinks (see `audioprep.logs`). This works
the same for every start method and never interleaves lines.
"""

from __future__ import annotations

import signal

from loguru import logger

__all__ = ["logger", "install_worker_logging", "worker_queue"]

_queue = None


def _queue_sink(queue):
    def sink(message) -> None:
        record = message.record
        exception = record["exception"]
        traceback_text = ""
        if exception is not None and exception.type is not None:
            import traceback

            traceback_text = "".join(traceback.format_exception(exception.type, exception.value, exception.traceback))
        queue.put(
            {
                "level": record["level"].name,
                "message": record["message"],
                "extra": {key: value for key, value in record["extra"].items() if isinstance(value, (str, int, float))},
                "name": record["name"],
                "function": record["function"],
                "line": record["line"],
                "process": record["process"].id,
                "traceback": traceback_text,
            }
        )

    return sink


def install_worker_logging(queue, level: str = "DEBUG") -> None:
    """Pool initializer: forward this process's log records to `queue`.

    Workers also ignore SIGINT, so Ctrl-C in a terminal reaches only the
    parent, which decides how to stop them.
    """
    global _queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logger.remove()
    _queue = queue
    if queue is not None:
        logger.add(_queue_sink(queue), level=level, format="{message}", catch=True)


def worker_queue():
    """Return the queue this worker process sends its log records to, or None."""
    return _queue
