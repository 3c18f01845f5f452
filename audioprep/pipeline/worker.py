"""Entry points that run inside pool worker processes."""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys

from . import log, worker_state

# From <linux/prctl.h>: deliver a signal to this process when its parent dies.
PR_SET_PDEATHSIG = 1


def initialize_worker(log_queue, log_level: str, table) -> None:
    """Pool initializer: forward logs to the parent and take a slot in `table`."""
    _die_with_parent()
    log.install_worker_logging(log_queue, log_level)
    worker_state.attach(table)
    # Load the decoder, the detectors and numpy now, while the parent is
    # still claiming, instead of inside the first file's time.
    from . import process  # noqa: F401


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this worker when the process that started it dies (Linux only).

    Without it, workers of a parent killed with SIGKILL finish their
    current file and may write segments while the next run prepares the
    same file. The signal follows the thread that started the worker; the
    pool is always started and used from the event loop's thread, which
    outlives it.
    """
    parent = multiprocessing.parent_process()
    if parent is not None:
        die_with_parent(parent.pid)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when `parent_pid`, its parent, dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        # The parent died before prctl took effect.
        os.kill(os.getpid(), signal.SIGKILL)
