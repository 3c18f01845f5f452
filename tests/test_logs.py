"""The forwarding of worker log records to the parent's sinks."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

from audioprep.logs import WorkerLogForwarder

CONTEXT = multiprocessing.get_context("spawn")


def _send_then_die_holding_lock(log_queue) -> None:
    log_queue.put({"level": "INFO", "message": "sent before the kill", "extra": {}, "process": os.getpid()})
    log_queue.close()
    log_queue.join_thread()
    # NOTE: `_wlock` is CPython's private writer lock of the queue. A record
    # send acquires it, so a kill during a send leaves it taken.
    log_queue._wlock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def _stop_in_thread(forwarder: WorkerLogForwarder, timeout: float) -> tuple[threading.Thread, list]:
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(forwarder.stop(timeout=timeout)), daemon=True)
    thread.start()
    thread.join(timeout + 10)
    return thread, outcome


def test_stop_ignores_dead_writer_lock(loguru_caplog):
    forwarder = WorkerLogForwarder(CONTEXT, run_id=7)
    forwarder.start()
    process = CONTEXT.Process(target=_send_then_die_holding_lock, args=(forwarder.queue,))
    process.start()
    process.join(30)
    assert process.exitcode == -signal.SIGKILL

    # The dead process still has the write lock. Stopping must neither wait on
    # it nor drop the record sent before.
    thread, outcome = _stop_in_thread(forwarder, timeout=5.0)

    assert not thread.is_alive(), "stop() waited on the dead writer's lock"
    assert outcome == [True]
    assert "sent before the kill" in loguru_caplog.text


def test_garbled_record_logs_warning(loguru_caplog):
    forwarder = WorkerLogForwarder(CONTEXT, run_id=7)
    forwarder.start()
    # NOTE: `_sem` and `_writer` are the queue's private item count and
    # pipe end. Taking one and sending a message that is not a pickle
    # simulates a put() whose bytes a killed writer garbled.
    forwarder.queue._sem.acquire()
    forwarder.queue._writer.send_bytes(b"not a pickle")

    thread, outcome = _stop_in_thread(forwarder, timeout=5.0)

    assert not thread.is_alive()
    assert outcome == [True]
    assert "reading worker log records failed (UnpicklingError" in loguru_caplog.text


def test_half_record_stop_times_out():
    forwarder = WorkerLogForwarder(CONTEXT, run_id=7)
    forwarder.start()
    # A length header for 100 bytes followed by 10: the reader waits for the rest.
    forwarder.queue._sem.acquire()
    forwarder.queue._writer._send((100).to_bytes(4, "big", signed=True) + b"x" * 10)

    thread, outcome = _stop_in_thread(forwarder, timeout=0.5)

    assert not thread.is_alive()
    assert outcome == [False]
