"""Run the pipeline over pending `AudioFile` rows: asyncio queue + process pool.

`PrepareAudio.fetch` claims rows in batches and puts one task per file on
a bounded `QueueManager` queue. `num_workers` `PrepareAudio.worker`
coroutines take tasks and await `process_audio_sync` in a
`ProcessPoolExecutor` of `num_workers` processes; when files take only
milliseconds each, a coroutine takes several at once and sends them as
one batch. Only this process writes
to the database, always from one dedicated thread, so the event loop never
blocks on a query. A run uses at most two database connections (the PostgreSQL
tests check this in pg_stat_activity).

Usage, once Django is set up::

    audio_preparer = PrepareAudio()
    asyncio.run(audio_preparer.fetch(model_for_vad=Path("webrtc"), output_dir=Path("out"), num_workers=4))
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from django.db import OperationalError, connections
from loguru import logger

from . import conf, ledger, runs
from .logs import WorkerLogForwarder, add_run_log
from .models import AudioFile, PrepRun
from .pipeline import worker_state
from .pipeline.audio_io import check_decoder
from .pipeline.config import WEBRTC_MODEL, PrepConfig
from .pipeline.errors import EnvironmentCheckError, PrepError, counted, format_duration, format_reason
from .pipeline.process import PrepResult, PrepTask, process_audio_sync, process_batch_sync, remove_segment_files
from .pipeline.vad.webrtc import check_webrtcvad
from .pipeline.worker import initialize_worker

# How many times a run rebuilds a broken process pool before it aborts.
MAX_POOL_REBUILDS = 5
# How long the parent waits, in all, for the exit codes of a broken pool's processes.
EXIT_CODE_WAIT_SECONDS = 2.0
COMMIT_BATCH_SIZE = 256
# Seconds the committer waits for more results before it writes a batch.
COMMIT_GATHER_SECONDS = 0.05
TASKS_IN_FLIGHT_PER_PROCESS = 1
# Files go to a worker process in batches sized so that a batch takes
# about BATCH_TARGET_SECONDS, judged by how long recent files took, and of
# at most BATCH_MAX_FILES. Files that take 50 ms or more go one at a time.
BATCH_TARGET_SECONDS = 0.1
BATCH_MAX_FILES = 32
# The queue contains claimed files that wait for a worker. Other runs cannot
# take a waiting file, so the claimer keeps the queue about two batches per
# worker deep, or QUEUE_MIN_SIZE when files go one at a time. It refills the
# queue in large claims once half of that depth is used.
QUEUE_SIZE_PER_WORKER = 2 * BATCH_MAX_FILES
QUEUE_MIN_SIZE = 8
# SQLite "database is locked" errors are retried this many times, with the
# wait doubling from DB_RETRY_FIRST_WAIT seconds; each call is one transaction.
DB_LOCK_RETRIES = 5
DB_RETRY_FIRST_WAIT = 0.2
# Status of a result whose file goes back to pending without counting the attempt.
REQUEUE = "requeue"
# Flag of a REQUEUE result whose worker was stopped while it prepared the
# file: segment files it already wrote are removed before the file is released.
STOPPED_IN_FLIGHT = "stopped_in_flight"
# Seconds the parent waits for terminated pool processes to exit.
TERMINATE_WAIT_SECONDS = 5.0
# Seconds the parent waits at the end of a run for the worker log records of
# the last pool, and of each pool that broke before it.
LOG_STOP_SECONDS = 5.0
BROKEN_LOG_STOP_SECONDS = 1.0


def usable_cpus() -> int:
    """Return the number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class RunStartError(Exception):
    """The run could not start; no row was changed."""


class QueueManager:
    """A bounded `asyncio.Queue` of tasks between the claimer and the workers.

    The bound keeps memory flat however many rows are pending: rows are
    claimed only when the queue has room.
    """

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=maxsize)

    @property
    def free_slots(self) -> int:
        return self.queue.maxsize - self.queue.qsize()

    async def put(self, item) -> None:
        await self.queue.put(item)

    async def get(self):
        return await self.queue.get()

    def task_done(self) -> None:
        self.queue.task_done()

    def drain(self) -> list:
        """Remove and return every queued item (used when a run stops early)."""
        items = []
        while True:
            try:
                items.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                return items
            self.queue.task_done()


def resolve_config(config: PrepConfig | None, model_for_vad) -> PrepConfig:
    """Return the run's config with `model_for_vad` applied (None keeps the config's).

    Without a config, the settings' policy is combined with the model first,
    so backend-specific defaults (padding, gate) follow the chosen backend.
    A given config keeps its policy values and only changes the model.
    """
    model = None
    if model_for_vad is not None and str(model_for_vad) != "":
        model = str(model_for_vad)
        if model != WEBRTC_MODEL:
            model = str(Path(model).expanduser().resolve())
    if config is None:
        return PrepConfig.from_dict(dict(conf.get("SEGMENTATION")) | {"vad_model": model or conf.get("VAD_MODEL")})
    if model is None or model == config.vad_model:
        return config
    # An empty hash makes PrepConfig hash the named model file afresh.
    return PrepConfig.from_dict(config.as_dict() | {"vad_model": model, "vad_model_sha256": ""})


def check_environment(config: PrepConfig) -> None:
    """Raise RunStartError unless the decoder and the VAD work."""
    try:
        check_decoder()
        if config.vad_model == WEBRTC_MODEL:
            check_webrtcvad()
        else:
            from .pipeline.vad.silero import check_model

            check_model(config.vad_model)
    except PrepError as exc:
        raise RunStartError(exc.reason()) from exc


def check_output_dir(output_dir: Path) -> None:
    """Raise RunStartError unless files can be created and renamed in `output_dir`."""
    probe = output_dir / f".audioprep-write-test-{os.getpid()}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"audioprep")
        probe.replace(probe.with_suffix(".renamed"))
        probe.with_suffix(".renamed").unlink()
    except OSError as exc:
        raise RunStartError(
            format_reason("io", f"output folder {output_dir} is not writable: {exc.strerror or exc}; "
                          "choose another with --output_dir or AUDIOPREP_OUTPUT_DIR")
        ) from exc


class PrepareAudio:
    """Prepare every pending `AudioFile` with a pool of worker processes.

    Arguments other than `config` bound or steer the run: `limit` caps how
    many files it claims, `retry_failed` requeues failed files first,
    `recover_stale` takes back every claim left by runs that died without
    waiting for their leases to expire, and `on_progress` is called with
    the summary so far after each committed batch.
    """

    def __init__(
        self,
        config: PrepConfig | None = None,
        *,
        limit: int | None = None,
        retry_failed: bool = False,
        recover_stale: bool = False,
        on_progress: Callable[[runs.RunSummary], None] | None = None,
        log_level: str = "DEBUG",
    ) -> None:
        self.config = config
        self.limit = limit
        self.retry_failed = retry_failed
        self.recover_stale = recover_stale
        self.on_progress = on_progress
        self.log_level = log_level
        self.max_attempts = int(conf.get("MAX_ATTEMPTS"))
        self.lease_seconds = int(conf.get("LEASE_SECONDS"))
        self.grace_seconds = float(conf.get("STOP_GRACE_SECONDS"))
        self.start_method = conf.get("START_METHOD")
        self.test_hook = conf.get("TEST_HOOK")
        self.helper_min_seconds = float(conf.get("DECODE_HELPER_MIN_SECONDS"))
        self.summary: runs.RunSummary | None = None
        self.run: PrepRun | None = None
        self.queue_manager: QueueManager | None = None
        self._db_executor: ThreadPoolExecutor | None = None
        self._executor: ProcessPoolExecutor | None = None
        self._slot_table = None
        self._pool_generation = 0
        self._pool_rebuilds = 0
        self._pool_lock: asyncio.Lock | None = None
        self._culprits: dict[int, dict[int, int]] = {}
        self._seen_processes: dict = {}
        self._num_workers = 0
        self._results: asyncio.Queue | None = None
        self._stop_signal: int | None = None
        self._stop_event: asyncio.Event | None = None
        self._hard_stop_event: asyncio.Event | None = None
        self._pool_terminated = False
        self._abort_reason = ""
        self._in_flight = 0
        # Files in flight that may have a decoder helper process.
        self._helpers_in_flight = 0
        # Largest batch a worker coroutine asked for so far; sets the queue depth.
        self._batch_hint = 1
        # Files claimed by this run whose result is not yet recorded or released.
        self._outstanding = 0
        self._released = 0
        self._progress = runs.RunSummary(run_id=None, status=PrepRun.Status.RUNNING)
        self._token = ""
        self._output_dir = Path(".")
        self._context = None
        # One per pool: the last is the current pool's (see WorkerLogForwarder).
        self._log_forwarders: list[WorkerLogForwarder] = []

    # -- database thread ---------------------------------------------------

    async def _db(self, function, *args, **kwargs):
        """Run a synchronous ORM call in the run's single database thread.

        Every ledger and run function is one transaction, so a call that
        failed because SQLite was locked by another writer is retried whole,
        with a doubling wait, at most DB_LOCK_RETRIES times.
        """
        loop = asyncio.get_running_loop()
        wait = DB_RETRY_FIRST_WAIT
        for attempt in range(DB_LOCK_RETRIES + 1):
            try:
                return await loop.run_in_executor(self._db_executor, lambda: function(*args, **kwargs))
            except OperationalError as exc:
                if "locked" not in str(exc) or attempt == DB_LOCK_RETRIES:
                    raise
                logger.bind(run_id=self.run.pk if self.run else None).warning(
                    "{} failed: {}; retry {} of {} in {:.1f} s", getattr(function, "__name__", function), exc,
                    attempt + 1, DB_LOCK_RETRIES, wait,
                )
            await asyncio.sleep(wait)
            wait *= 2

    @staticmethod
    def _close_db_connections() -> None:
        connections.close_all()

    # -- public API: fetch and worker ------------------------------------------

    async def fetch(self, model_for_vad: Path | str | None = None, output_dir: Path | str | None = None, num_workers: int = 1) -> None:
        """Fetch and process pending audio files with `num_workers` worker processes.

        Claims rows off the event loop, runs `worker` coroutines over a pool
        of processes, records every result, and leaves the outcome in
        `self.summary` and on the `PrepRun` row. Raises RunStartError, with
        no row changed, when the decoder, the VAD model or the output folder
        is unusable.
        """
        if num_workers < 1:
            raise RunStartError(format_reason("config", f"num_workers must be at least 1, got {num_workers}"))
        config = resolve_config(self.config, model_for_vad)
        self.config = config
        self._output_dir = Path(output_dir or conf.output_dir()).expanduser().resolve()
        check_environment(config)
        check_output_dir(self._output_dir)

        self._db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audioprep-db")
        try:
            await self._run(config, num_workers)
        finally:
            await self._db(self._close_db_connections)
            self._db_executor.shutdown(wait=True)
            self._restore_signal_handlers()

    async def worker(self, worker_id: int, model_for_vad: Path | str | None, output_dir: Path | str, executor: ProcessPoolExecutor) -> None:
        """Take tasks from the queue and prepare each in the process pool.

        `model_for_vad` and `output_dir` are part of every task already; the
        pool in use is the run's current one, which replaces `executor` if
        a worker process died and the pool was rebuilt.
        """
        loop = asyncio.get_running_loop()
        seconds_per_file = None
        finished = False
        while not finished:
            task = await self.queue_manager.get()
            if task is None:
                self.queue_manager.task_done()
                return
            batch = [task]
            limit = self._batch_limit(seconds_per_file)
            self._batch_hint = max(self._batch_hint, limit)
            while len(batch) < limit:
                try:
                    task = self.queue_manager.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if task is None:
                    self.queue_manager.task_done()
                    finished = True
                    break
                batch.append(task)
            if len(batch) > 1:
                logger.bind(run_id=self.run.pk).debug("worker {}: {} files sent to the pool as one batch", worker_id, len(batch))
            helper = len(batch) == 1 and self._core_idle()
            if helper:
                batch = [dataclasses.replace(batch[0], helper_min_seconds=self.helper_min_seconds)]
            self._in_flight += len(batch)
            self._helpers_in_flight += helper
            try:
                if self._stopping:
                    # Dispatching stopped: the files go back to pending unstarted.
                    results = [PrepResult(task.audio_file_id, status=REQUEUE) for task in batch]
                else:
                    results = await self._prepare_batch(loop, batch, executor)
                for result in results:
                    await self._results.put(result)
            finally:
                self._in_flight -= len(batch)
                self._helpers_in_flight -= helper
                for _ in batch:
                    self.queue_manager.task_done()
            elapsed = [result.elapsed for result in results if result.elapsed > 0]
            if elapsed:
                recent = sum(elapsed) / len(elapsed)
                seconds_per_file = recent if seconds_per_file is None else 0.5 * seconds_per_file + 0.5 * recent

    def _core_idle(self) -> bool:
        """Return whether a file sent now may get a decoder helper: no file waits and a core is idle.

        Counts a core for each file in flight and one more for each that may
        have a helper, so helpers never take a core that a worker could use.
        """
        if self.helper_min_seconds <= 0 or not self.queue_manager.queue.empty():
            return False
        return self._in_flight + self._helpers_in_flight + 2 <= usable_cpus()

    @staticmethod
    def _batch_limit(seconds_per_file: float | None) -> int:
        """Return how many files the next batch may hold, from the recent time per file."""
        if seconds_per_file is None:
            return 1
        return max(1, min(BATCH_MAX_FILES, int(BATCH_TARGET_SECONDS / max(seconds_per_file, 1e-4))))

    # -- run lifecycle -------------------------------------------------------

    async def _run(self, config: PrepConfig, num_workers: int) -> None:
        started = time.monotonic()
        self.run = await self._db(runs.open_run, config, num_workers, self._output_dir)
        run = self.run
        self._token = f"{socket.gethostname()[:40]}:{os.getpid()}:{run.pk}"
        log = logger.bind(run_id=run.pk)
        sink_id = add_run_log(Path(run.log_path), run.pk, self.log_level)
        try:
            requeued, gave_up = await self._db(ledger.recover_stale, self.max_attempts, self.recover_stale, self._token)
            if requeued or gave_up:
                log.warning("took back {} stale claims ({} ended failed after {} attempts)", requeued + gave_up, gave_up, self.max_attempts)
            for closed in await self._db(runs.close_abandoned_runs, run, self.lease_seconds):
                log.warning("run {} had stopped without closing its record; it is now interrupted", closed)
            if not self.recover_stale:
                for level, note in await self._db(runs.other_claims_notes, run):
                    log.log(level, "{}", note)
            if self.retry_failed:
                log.info("requeued {}", counted(await self._db(ledger.requeue_failed), "failed file"))
            pending = await self._db(ledger.count_pending)
            planned = min(pending, self.limit) if self.limit is not None else pending
            log.info(
                "run {} started: {} to prepare ({} pending), {}, VAD {}, output {}, parameters {} (hash {})",
                run.pk, counted(planned, "file"), pending, counted(num_workers, "worker"), config.vad_model, self._output_dir, config.as_dict(), config.config_hash(),
            )
            status, reason = await self._process_all(config, num_workers, log)
        except BaseException as exc:
            await self._db(ledger.release, self._token)
            status = PrepRun.Status.INTERRUPTED if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)) else PrepRun.Status.ABORTED
            await self._db(runs.finalize_run, run, status, format_reason("run", f"{type(exc).__name__}: {exc}"))
            log.opt(exception=exc).error("run {} {}: {}", run.pk, status, exc)
            logger.remove(sink_id)
            raise
        try:
            await self._db(runs.write_manifests, run, self._output_dir)
        except OSError as exc:
            reason = format_reason("output", f"manifest not written: {exc.strerror or exc}")
            log.error("run {}: {}", run.pk, reason)
            if status == PrepRun.Status.COMPLETED:
                status = PrepRun.Status.COMPLETED_WITH_ERRORS
        summary = await self._db(runs.finalize_run, run, status, reason)
        summary.elapsed = time.monotonic() - started
        summary.exit_code = self._exit_code(summary)
        self.summary = summary
        log.info(
            "run {} {}: {} done, {} no speech, {} failed, {} skipped, {} released; {}, {} speech, {:.1f} s",
            run.pk, summary.status, summary.num_done, summary.num_no_speech, summary.num_failed, summary.num_skipped,
            summary.num_released, counted(summary.num_segments, "segment"), format_duration(summary.speech_seconds), summary.elapsed,
        )
        logger.remove(sink_id)

    def _exit_code(self, summary: runs.RunSummary) -> int:
        if self._stop_signal == signal.SIGINT:
            return runs.EXIT_SIGINT
        if self._stop_signal == signal.SIGTERM:
            return runs.EXIT_SIGTERM
        if summary.status == PrepRun.Status.ABORTED:
            return runs.EXIT_NOT_STARTED
        if summary.num_failed or summary.status == PrepRun.Status.COMPLETED_WITH_ERRORS:
            return runs.EXIT_FILES_FAILED
        return runs.EXIT_OK

    async def _process_all(self, config: PrepConfig, num_workers: int, log) -> tuple[str, str]:
        """Run claimer, workers, committer and lease renewer until done or stopped."""
        self.queue_manager = QueueManager(maxsize=max(QUEUE_MIN_SIZE, QUEUE_SIZE_PER_WORKER * num_workers))
        self._results = asyncio.Queue()
        self._stop_event = asyncio.Event()
        self._hard_stop_event = asyncio.Event()
        self._pool_lock = asyncio.Lock()
        self._context = multiprocessing.get_context(self.start_method)
        # Forked children must not inherit an open database socket.
        await self._db(self._close_db_connections)
        self._start_pool(num_workers)
        self._install_signal_handlers()
        committer = asyncio.create_task(self._committer(log), name="audioprep-committer")
        committer.add_done_callback(self._on_committer_done)
        renewer = asyncio.create_task(self._renew_leases(), name="audioprep-lease-renewer")
        # One coroutine per process. NOTE: with a second coroutine per process
        # (a task waiting in the pool), the file blamed for a worker death was
        # sometimes handed back instead of failed; it stays off until that
        # race is understood.
        workers = [
            asyncio.create_task(self.worker(i, config.vad_model, self._output_dir, self._executor), name=f"audioprep-worker-{i}")
            for i in range(TASKS_IN_FLIGHT_PER_PROCESS * num_workers)
        ]
        try:
            await self._claim_loop(config, log)
            for _ in workers:
                await self.queue_manager.put(None)
            await self._wait_for_workers(workers, log)
            await self._results.put(None)
            await committer
        finally:
            renewer.cancel()
            self._remove_signal_handlers()
            for task in [*workers, committer]:
                if not task.done():
                    task.cancel()
            self._shutdown_pool()
            self._stop_log_forwarders(log)
        await self._db(ledger.release, self._token)
        if self._abort_reason:
            return PrepRun.Status.ABORTED, self._abort_reason
        if self._stop_signal is not None:
            name = signal.Signals(self._stop_signal).name
            return PrepRun.Status.INTERRUPTED, format_reason("signal", f"stopped by {name}")
        if self._progress.num_failed:
            return PrepRun.Status.COMPLETED_WITH_ERRORS, ""
        return PrepRun.Status.COMPLETED, ""

    def _on_committer_done(self, task: asyncio.Task) -> None:
        """Stop claiming when the committer failed, so the run cannot wait forever."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self._abort_reason = format_reason("db", f"recording results failed: {type(exc).__name__}: {exc}")
        logger.bind(run_id=self.run.pk).opt(exception=exc).error("{}", self._abort_reason)
        self._stop_event.set()

    async def _claim_loop(self, config: PrepConfig, log) -> None:
        """Claim rows into the queue until none is left or the run stops.

        A file handed back while the run goes on (its worker's pool broke)
        is pending again, so the loop ends only once every claimed file has
        its result recorded, not merely when a claim comes back empty.
        """
        claimed_total = 0
        while not self._stopping:
            remaining = None if self.limit is None else self.limit - claimed_total
            if remaining is not None and remaining <= 0:
                return
            queued = self.queue_manager.queue.qsize()
            depth = min(self.queue_manager.queue.maxsize, max(QUEUE_MIN_SIZE, 2 * self._num_workers * self._batch_hint))
            # Claim in large transactions: wait until half the depth is used,
            # unless the workers are about to run out of files.
            starving = queued < 2 * self._num_workers
            if queued >= depth or (queued > depth // 2 and not starving):
                await self._sleep_unless_stopped(0.02)
                continue
            size = depth - queued if remaining is None else min(depth - queued, remaining)
            claims = await self._db(ledger.claim_batch, self.run, self._token, size, self.lease_seconds)
            if not claims:
                if self._outstanding == 0:
                    return
                await self._sleep_unless_stopped(0.1)
                continue
            claimed_total += len(claims)
            self._outstanding += len(claims)
            for claim in claims:
                task = PrepTask(claim.audio_file_id, claim.path, str(self._output_dir), config, self.run.pk, self.test_hook, claim.fresh)
                await self.queue_manager.put(task)

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    @property
    def _stopping(self) -> bool:
        return self._stop_signal is not None or bool(self._abort_reason)

    async def _wait_for_workers(self, workers: list[asyncio.Task], log) -> None:
        """Wait for the worker coroutines; after a stop signal, for at most the grace period.

        Queued files are handed back as soon as the run stops (see `worker`).
        Files still in flight when the grace period ends, or when a second
        signal arrives, are stopped by terminating the pool and handed back.
        """
        all_done = asyncio.ensure_future(asyncio.wait(workers))
        stopped = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait({all_done, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if all_done.done():
            await asyncio.gather(*workers)
            return
        hard_stop = asyncio.ensure_future(self._hard_stop_event.wait())
        try:
            await asyncio.wait({all_done, hard_stop}, timeout=self.grace_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hard_stop.cancel()
        pending = [task for task in workers if not task.done()]
        if pending:
            if self._stop_signal is not None:
                log.warning("{} workers still busy after the stop request; terminating the pool", len(pending))
            self._terminate_pool()
        await asyncio.gather(*workers, return_exceptions=True)
        all_done.cancel()

    # -- process pool ------------------------------------------------------------

    def _start_pool(self, num_workers: int) -> None:
        self._slot_table = worker_state.new_table(self._context, num_workers)
        forwarder = WorkerLogForwarder(self._context, self.run.pk)
        forwarder.start()
        self._log_forwarders.append(forwarder)
        self._executor = ProcessPoolExecutor(
            max_workers=num_workers,
            mp_context=self._context,
            initializer=initialize_worker,
            initargs=(forwarder.queue, self.log_level, self._slot_table),
        )
        self._pool_generation += 1
        self._num_workers = num_workers

    def _shutdown_pool(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def _stop_log_forwarders(self, log) -> None:
        """Emit the last records of every pool, waiting less for a broken pool's."""
        for index, forwarder in enumerate(self._log_forwarders):
            current = index == len(self._log_forwarders) - 1
            if not forwarder.stop(timeout=LOG_STOP_SECONDS if current else BROKEN_LOG_STOP_SECONDS):
                log.warning(
                    "reading the log records of worker pool {} of {} timed out; its last records may be lost", index + 1, len(self._log_forwarders)
                )

    def _pool_processes(self) -> list[multiprocessing.process.BaseProcess]:
        """Return the live worker processes of the current pool.

        Uses only public APIs: the pids the workers wrote into the slot
        table, matched against this process's live multiprocessing children.
        """
        if self._slot_table is None:
            return []
        pids = worker_state.pids(self._slot_table)
        return [process for process in multiprocessing.active_children() if process.pid in pids]

    def _terminate_pool(self) -> None:
        """Kill the pool's processes at once; their files are handed back."""
        executor = self._executor
        if executor is None:
            return
        self._pool_terminated = True
        processes = self._pool_processes()
        for process in processes:
            process.terminate()
        executor.shutdown(wait=False, cancel_futures=True)
        # Their files go back to pending only after this wait, so no dying
        # worker renames a segment file after its file's partial output is removed.
        deadline = time.monotonic() + TERMINATE_WAIT_SECONDS
        for process in processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join(timeout=1.0)

    @staticmethod
    def _dead_workers(executor: ProcessPoolExecutor, seen: dict | None = None, pids: set[int] | None = None) -> dict[int, int]:
        """Return {pid: exit code} of the pool's processes that died.

        NOTE: exit codes are only available through the executor's private
        `_processes` map (Python 3.11-3.13); without it no file is blamed
        and the files in flight are retried with their attempt counted.
        """
        dead = {}
        processes = {pid: process for pid, process in (seen or {}).items() if pids is None or pid in pids}
        processes.update(getattr(executor, "_processes", None) or {})
        deadline = time.monotonic() + EXIT_CODE_WAIT_SECONDS
        for pid, process in list(processes.items()):
            # The executor's own thread may reap the process first and store
            # its exit code a moment later. Until then join() returns at once
            # without one, so the sleep lets that thread run.
            while True:
                process.join(timeout=0.05)
                if process.exitcode is not None or time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
            if process.exitcode not in (None, 0):
                dead[pid] = process.exitcode
        return dead

    @staticmethod
    def _culprit_codes(dead: dict[int, int]) -> dict[int, int]:
        """Return the deaths that broke the pool, without the executor's own kills.

        When one worker dies, the executor terminates the others with
        SIGTERM; those are bystanders. Only when every death is a SIGTERM
        (someone sent it to a worker) are they all suspects.
        """
        first = {pid: code for pid, code in dead.items() if code != -signal.SIGTERM}
        return first or dead

    async def _prepare_batch(self, loop, tasks: list[PrepTask], executor: ProcessPoolExecutor) -> list[PrepResult]:
        executor = self._executor or executor
        generation = self._pool_generation
        table = self._slot_table
        try:
            if len(tasks) == 1:
                future = loop.run_in_executor(executor, process_audio_sync, tasks[0])
            else:
                future = loop.run_in_executor(executor, process_batch_sync, tasks)
            # Keep the worker Process objects: when the pool breaks, the
            # executor may drop its own map before the dead worker is looked up.
            self._seen_processes.update(getattr(executor, "_processes", None) or {})
            result = await future
            return [result] if len(tasks) == 1 else result
        except BrokenProcessPool:
            pass
        except RuntimeError:
            # The pool was shut down between the stop request and this submit.
            if not self._stopping:
                raise
            return [PrepResult(task.audio_file_id, status=REQUEUE) for task in tasks]
        # Files of the batch that finished before the worker died are handed
        # back with the others and prepared again: their results never
        # reached this process.
        return [await self._result_after_break(task, generation, executor, table) for task in tasks]

    async def _result_after_break(self, task: PrepTask, generation: int, executor: ProcessPoolExecutor, table) -> PrepResult:
        """Return the result of a file whose worker pool broke while the file was in flight."""
        known = self._culprits.get(generation)
        if known is not None and known[1] and task.audio_file_id in known[0]:
            # This file's worker broke the pool; the run may have stopped the
            # pool since (after too many rebuilds), but the death came first.
            return self._worker_death_result(task, known[0][task.audio_file_id])
        if self._pool_terminated or self._stop_signal is not None:
            # The run stopped the pool itself: the file was not at fault.
            return PrepResult(task.audio_file_id, status=REQUEUE, flags=[STOPPED_IN_FLIGHT])
        culprits, certain = await self._handle_broken_pool(generation, executor, table)
        exit_code = culprits.get(task.audio_file_id)
        if exit_code is None:
            # Another file's worker died: hand this one back unharmed.
            return PrepResult(task.audio_file_id, status=REQUEUE, flags=[STOPPED_IN_FLIGHT])
        if certain:
            return self._worker_death_result(task, exit_code)
        # Several workers died of SIGTERM at once: retry, counting the attempt.
        return PrepResult(
            task.audio_file_id, status="failed",
            reason=format_reason("worker", f"worker process stopped by signal {-exit_code}; the file is retried"),
        )

    async def _handle_broken_pool(self, generation: int, executor: ProcessPoolExecutor, table) -> tuple[dict[int, int], bool]:
        """Find which files the dead processes held and rebuild the pool once.

        Returns ({audio_file_id: exit code}, certain) for the files whose
        own worker died; `certain` is False when the executor's own SIGTERM
        kills cannot be told apart from the death that broke the pool. Every
        coroutine that saw this pool break gets the same answer.
        """
        async with self._pool_lock:
            if generation in self._culprits:
                return self._culprits[generation]
            holders = worker_state.holders(table)
            dead = self._dead_workers(executor, self._seen_processes, worker_state.pids(table))
            suspects = self._culprit_codes(dead)
            certain = all(code != -signal.SIGTERM for code in suspects.values())
            culprits = {holders[pid]: code for pid, code in suspects.items() if pid in holders}
            self._culprits[generation] = (culprits, certain)
            if self._stopping:
                return culprits, certain
            self._pool_rebuilds += 1
            log = logger.bind(run_id=self.run.pk)
            if self._pool_rebuilds > MAX_POOL_REBUILDS:
                self._abort_reason = format_reason("worker", f"worker processes died {self._pool_rebuilds} times; giving up")
                log.error("{}", self._abort_reason)
                self._stop_event.set()
                return culprits, certain
            log.warning(
                "worker process died (exit codes {}, files {}); rebuilding the pool ({} of at most {})",
                sorted(dead.values()), sorted(culprits), self._pool_rebuilds, MAX_POOL_REBUILDS,
            )
            executor.shutdown(wait=False, cancel_futures=True)
            await self._db(self._close_db_connections)
            self._start_pool(self._num_workers)
            return culprits, certain

    def _worker_death_result(self, task: PrepTask, exit_code: int) -> PrepResult:
        if exit_code < 0:
            number = -exit_code
            hint = " (possibly out of memory)" if number == signal.SIGKILL else ""
            detail = f"terminated by signal {number} ({signal.Signals(number).name}){hint}"
        else:
            detail = f"worker process exited with status {exit_code}"
        return PrepResult(task.audio_file_id, status="failed", reason=format_reason("worker", detail), flags=["worker_died"])

    # -- committer, leases, signals -----------------------------------------------

    async def _committer(self, log) -> None:
        finished = False
        while not finished:
            batch = [await self._results.get()]
            # Results of short files arrive a few at a time; gathering them
            # for a moment makes fewer, larger transactions.
            deadline = time.monotonic() + COMMIT_GATHER_SECONDS
            while len(batch) < COMMIT_BATCH_SIZE and batch[-1] is not None:
                if self._results.empty():
                    if time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(COMMIT_GATHER_SECONDS / 5)
                    continue
                batch.append(self._results.get_nowait())
            if batch[-1] is None:
                batch.pop()
                finished = True
            if batch:
                await self._commit(batch, log)

    def _remove_partial_output(self, audio_file_ids: list[int], log) -> None:
        """Delete the segment files that stopped workers wrote for files now handed back."""
        for audio_file_id in audio_file_ids:
            try:
                removed = remove_segment_files(self._output_dir, audio_file_id)
            except OSError as exc:
                log.bind(audio_file_id=audio_file_id).warning("file {}: cannot remove its partial segments: {}", audio_file_id, exc)
                continue
            if removed:
                log.bind(audio_file_id=audio_file_id).debug("file {}: removed {} partial segment files of the stopped attempt", audio_file_id, removed)

    async def _commit(self, batch: list[PrepResult], log) -> None:
        requeue = [result.audio_file_id for result in batch if result.status == REQUEUE]
        stopped = [result.audio_file_id for result in batch if result.status == REQUEUE and STOPPED_IN_FLIGHT in result.flags]
        if stopped:
            # Before the release, so that no new attempt of the file writes meanwhile.
            await self._db(self._remove_partial_output, stopped, log)
        if requeue:
            await self._db(ledger.release, self._token, requeue)
            for audio_file_id in requeue:
                log.bind(audio_file_id=audio_file_id).debug("file {} handed back unfinished; it is pending again", audio_file_id)
        results = [result for result in batch if result.status != REQUEUE]
        recorded = await self._db(ledger.commit_results, self.run, self._token, results, self.run.config_hash, self.max_attempts)
        self._outstanding -= len(batch)
        for result, status in recorded:
            self._count(result, status)
            file_log = log.bind(audio_file_id=result.audio_file_id)
            if status == AudioFile.Status.DONE:
                file_log.info("file {} done: {}, {:.2f} s speech of {:.2f} s, took {:.3f} s", result.audio_file_id, counted(len(result.segments), "segment"),
                              sum(segment.duration for segment in result.segments), result.duration or 0.0, result.elapsed)
            elif status == AudioFile.Status.NO_SPEECH:
                file_log.info("file {} no_speech: {:.2f} s decoded, no speech found", result.audio_file_id, result.duration or 0.0)
            elif status == AudioFile.Status.PENDING:
                file_log.warning("file {} requeued: {}", result.audio_file_id, result.reason)
            else:
                file_log.error("file {} failed: {}", result.audio_file_id, result.reason)
            if result.decode_warnings:
                file_log.warning("file {} decoded with {}: {}", result.audio_file_id, counted(len(result.decode_warnings), "warning"), "; ".join(result.decode_warnings))
        if self.on_progress is not None:
            self.on_progress(self._progress)

    def _count(self, result: PrepResult, status: str) -> None:
        progress = self._progress
        if status == AudioFile.Status.DONE:
            progress.num_done += 1
            progress.num_segments += len(result.segments)
            progress.speech_seconds += sum(segment.duration for segment in result.segments)
        elif status == AudioFile.Status.NO_SPEECH:
            progress.num_no_speech += 1
        elif status == AudioFile.Status.FAILED:
            progress.num_failed += 1
        if status != AudioFile.Status.PENDING:
            progress.num_selected += 1
            progress.audio_seconds += result.duration or 0.0

    async def _renew_leases(self) -> None:
        interval = max(1.0, self.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._db(ledger.renew_leases, self._token, self.lease_seconds)
            except Exception as exc:  # a missed renewal is retried next interval
                logger.bind(run_id=self.run.pk).warning("lease renewal failed: {}", exc)

    def _install_signal_handlers(self) -> None:
        self._installed_signals = {}
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            original = signal.getsignal(signum)
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
                self._installed_signals[signum] = original
            except (NotImplementedError, RuntimeError):
                pass

    def _remove_signal_handlers(self) -> None:
        """Hand signals to `_on_late_signal` while the run records its end.

        A repeated Ctrl-C that arrives after the pool stopped must not raise
        KeyboardInterrupt in the middle of writing the manifest or the run
        record; `_restore_signal_handlers` ends this once the run is closed.
        """
        loop = asyncio.get_running_loop()
        for signum in getattr(self, "_installed_signals", {}):
            loop.remove_signal_handler(signum)
            signal.signal(signum, self._on_late_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, original in getattr(self, "_installed_signals", {}).items():
            signal.signal(signum, original if original is not None else signal.SIG_DFL)
        self._installed_signals = {}

    def _on_late_signal(self, signum, frame) -> None:
        logger.bind(run_id=self.run.pk).warning("{} received while the run is closing; it ends after its record is written", signal.Signals(signum).name)

    def _on_signal(self, signum: int) -> None:
        log = logger.bind(run_id=self.run.pk)
        if self._stop_signal is None:
            self._stop_signal = signum
            log.warning(
                "{} received: no new files; in-flight files get {:.0f} s to finish; send it again to stop at once",
                signal.Signals(signum).name, self.grace_seconds,
            )
            self._stop_event.set()
            return
        log.warning("{} received again: stopping at once", signal.Signals(signum).name)
        self._hard_stop_event.set()
