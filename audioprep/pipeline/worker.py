"""Entry points that run inside pool worker processes."""

from __future__ import annotations

from . import log, worker_state


def initialize_worker(log_queue, log_level: str, table) -> None:
    """Pool initializer: forward logs to the parent and take a slot in `table`."""
    log.install_worker_logging(log_queue, log_level)
    worker_state.attach(table)
