"""A shared table of which worker process is preparing which file.

When a pool child dies (SIGKILL from the out-of-memory killer, a native
crash), the parent reads this table to learn which file the dead process
held, so only that file is failed and the others in flight are retried.
The table lives in shared memory and is written synchronously, so an entry
survives the sudden death of its writer.
"""

from __future__ import annotations

import contextlib
import os

# A process killed while it has the table's lock never releases it. After
# this many seconds the readers go on without the lock.
LOCK_WAIT_SECONDS = 2.0

_table = None
_slot: int | None = None


@contextlib.contextmanager
def _locked(table):
    lock = table.get_lock()
    acquired = lock.acquire(timeout=LOCK_WAIT_SECONDS)
    try:
        yield
    finally:
        if acquired:
            lock.release()


def new_table(context, num_slots: int):
    """Return a table with `num_slots` (pid, audio_file_id) pairs for one pool."""
    return context.Array("q", 2 * num_slots, lock=True)


def attach(table) -> None:
    """Pool initializer step: take the first free slot of `table`."""
    global _table, _slot
    _table = table
    if table is None:
        return
    pid = os.getpid()
    with _locked(table):
        for slot in range(len(table) // 2):
            if table[2 * slot] == 0:
                table[2 * slot] = pid
                table[2 * slot + 1] = 0
                _slot = slot
                return


def mark(audio_file_id: int) -> None:
    """Record the file this process works on now (0 when idle)."""
    if _table is not None and _slot is not None:
        _table[2 * _slot + 1] = audio_file_id


def pids(table) -> set[int]:
    """Return the pids of every process that took a slot in `table`."""
    with _locked(table):
        values = list(table)
    return {values[i] for i in range(0, len(values), 2) if values[i]}


def holders(table) -> dict[int, int]:
    """Return {pid: audio_file_id} for every busy process in `table`."""
    with _locked(table):
        values = list(table)
    return {values[i]: values[i + 1] for i in range(0, len(values), 2) if values[i] and values[i + 1]}
