"""Claim, lease, commit and release `AudioFile` rows.

The database row is the ledger. A claim is atomic on every backend: on
PostgreSQL candidate rows are locked with `SELECT ... FOR UPDATE SKIP
LOCKED`; on every backend the claim itself is an `UPDATE ... WHERE
status = 'pending'` followed by a read-back of the rows that carry this
run's token, so two runs never hold the same row. Claims carry a lease;
rows whose lease expired are taken back at the start of every run.

All functions here are synchronous and run in the run's database thread.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from loguru import logger

from .models import AudioFile, FileResult, PrepRun, Segment
from .pipeline.errors import format_reason
from .pipeline.process import PrepResult

Status = AudioFile.Status
# Reason categories of failures that may not recur on another attempt.
TRANSIENT_CATEGORIES = ("worker", "db")


@dataclass(frozen=True)
class Claim:
    """A claimed row: its id, path and the attempt number this claim started.

    `fresh` is True when no run ever claimed the row before, so no earlier
    attempt can have left outputs behind.
    """

    audio_file_id: int
    path: str
    attempt: int
    fresh: bool = False


def _supports_skip_locked() -> bool:
    return connection.features.has_select_for_update_skip_locked


def claim_batch(run: PrepRun, token: str, size: int, lease_seconds: int) -> list[Claim]:
    """Claim up to `size` pending rows for `token`, oldest first."""
    if size <= 0:
        return []
    now = timezone.now()
    with transaction.atomic():
        candidates = AudioFile.objects.filter(status=Status.PENDING).order_by("id")
        if _supports_skip_locked():
            candidates = candidates.select_for_update(skip_locked=True)
        candidates = list(candidates.values_list("id", "last_run_id")[:size])
        if not candidates:
            return []
        ids = [pk for pk, _last_run in candidates]
        fresh = {pk for pk, last_run in candidates if last_run is None}
        AudioFile.objects.filter(id__in=ids, status=Status.PENDING).update(
            status=Status.PROCESSING,
            claimed_by=token,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=F("attempts") + 1,
            last_run=run,
            updated_at=now,
        )
        rows = AudioFile.objects.filter(id__in=ids, status=Status.PROCESSING, claimed_by=token)
        return [Claim(pk, path, attempts, pk in fresh) for pk, path, attempts in rows.order_by("id").values_list("id", "path", "attempts")]


def count_pending() -> int:
    return AudioFile.objects.filter(status=Status.PENDING).count()


def renew_leases(token: str, lease_seconds: int) -> int:
    """Extend the lease of every row `token` holds; return how many."""
    return AudioFile.objects.filter(status=Status.PROCESSING, claimed_by=token).update(
        lease_until=timezone.now() + timedelta(seconds=lease_seconds)
    )


def release(token: str, audio_file_ids: Iterable[int] | None = None) -> int:
    """Hand rows back to pending without counting the attempt; return how many."""
    rows = AudioFile.objects.filter(status=Status.PROCESSING, claimed_by=token)
    if audio_file_ids is not None:
        rows = rows.filter(id__in=list(audio_file_ids))
    return rows.update(
        status=Status.PENDING,
        claimed_by="",
        lease_until=None,
        attempts=F("attempts") - 1,
        updated_at=timezone.now(),
    )


def recover_stale(max_attempts: int, all_claims: bool = False, exclude_token: str = "") -> tuple[int, int]:
    """Take back claims whose lease expired (or every claim with `all_claims`).

    Rows with attempts left go back to pending; the others end failed.
    Returns (requeued, failed).
    """
    now = timezone.now()
    stale = AudioFile.objects.filter(status=Status.PROCESSING)
    if not all_claims:
        stale = stale.filter(lease_until__lt=now)
    if exclude_token:
        stale = stale.exclude(claimed_by=exclude_token)
    with transaction.atomic():
        failed = stale.filter(attempts__gte=max_attempts).update(
            status=Status.FAILED,
            reason=format_reason("worker", f"gave up after {max_attempts} attempts; the run holding the file stopped"),
            claimed_by="",
            lease_until=None,
            updated_at=now,
        )
        requeued = stale.filter(attempts__lt=max_attempts).update(
            status=Status.PENDING, claimed_by="", lease_until=None, updated_at=now
        )
    return requeued, failed


def requeue_failed() -> int:
    """Set every failed row back to pending with a fresh attempt count."""
    return AudioFile.objects.filter(status=Status.FAILED).update(
        status=Status.PENDING, reason="", attempts=0, updated_at=timezone.now()
    )


def _final_status(result: PrepResult, attempts: int, max_attempts: int) -> str:
    if result.status != Status.FAILED:
        return result.status
    category = result.reason.split(":", 1)[0]
    if category in TRANSIENT_CATEGORIES and "worker_died" not in result.flags and attempts < max_attempts:
        return Status.PENDING
    return Status.FAILED


def commit_results(run: PrepRun, token: str, results: list[PrepResult], config_hash: str, max_attempts: int) -> list[tuple[PrepResult, str]]:
    """Record a batch of results in one transaction.

    A result whose row is no longer claimed by `token` (its lease expired
    and another run took it) is not recorded. Returns each recorded result
    with the status its row ended in.

    This runs once per batch of results and dominates the database cost of
    short files, so it uses one set-based DELETE and one prepared statement
    (executemany) per table instead of model instances.
    """
    now = timezone.now()
    recorded = []
    with transaction.atomic():
        rows = AudioFile.objects.filter(
            id__in=[result.audio_file_id for result in results], status=Status.PROCESSING, claimed_by=token
        ).select_for_update()
        attempts = dict(rows.values_list("id", "attempts"))
        for result in results:
            if result.audio_file_id not in attempts:
                logger.warning("file {}: claim lost before its result was recorded; result dropped", result.audio_file_id)
                continue
            recorded.append((result, _final_status(result, attempts[result.audio_file_id], max_attempts)))
        if not recorded:
            return recorded
        ids = [result.audio_file_id for result, _status in recorded]
        Segment.objects.filter(audio_file_id__in=ids).delete()
        FileResult.objects.filter(run=run, audio_file_id__in=ids).delete()
        db_now = connection.ops.adapt_datetimefield_value(now)
        segments = [
            (result.audio_file_id, run.pk, record.index, record.start, record.end, round(record.end - record.start, 6),
             record.path, record.peak_dbfs, record.rms_dbfs)
            for result, status in recorded
            if status == Status.DONE
            for record in result.segments
        ]
        file_results = [
            (run.pk, result.audio_file_id, status, _row_reason(result, status), result.elapsed,
             len(result.segments) if status == Status.DONE else 0, db_now)
            for result, status in recorded
        ]
        with connection.cursor() as cursor:
            if segments:
                cursor.executemany(_insert_sql(Segment, _SEGMENT_FIELDS), segments)
            cursor.executemany(_insert_sql(FileResult, _FILE_RESULT_FIELDS), file_results)
            _update_rows(cursor, recorded, run, config_hash, db_now)
    return recorded


def _row_reason(result: PrepResult, status: str) -> str:
    return result.reason if status in (Status.FAILED, Status.PENDING) else ""


_SEGMENT_FIELDS = ("audio_file", "run", "index", "start", "end", "duration", "path", "peak_dbfs", "rms_dbfs")
_FILE_RESULT_FIELDS = ("run", "audio_file", "status", "reason", "elapsed", "num_segments", "created_at")
# Columns a result sets only when the worker learned their value.
_PROBED_FIELDS = ("size_bytes", "checksum", "container", "codec", "sample_rate", "channels", "duration")


@functools.lru_cache(maxsize=64)
def _columns(model, names: tuple[str, ...]) -> list[str]:
    return [connection.ops.quote_name(model._meta.get_field(name).column) for name in names]


@functools.lru_cache(maxsize=16)
def _insert_sql(model, names: tuple[str, ...]) -> str:
    columns = ", ".join(_columns(model, names))
    values = ", ".join(["%s"] * len(names))
    return f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({columns}) VALUES ({values})"


def _update_rows(cursor, recorded: list[tuple[PrepResult, str]], run: PrepRun, config_hash: str, db_now) -> None:
    """Write the outcome of each recorded result to its row, one prepared UPDATE per set of columns."""
    groups: dict[tuple[str, ...], list[list]] = {}
    for result, status in recorded:
        done = status == Status.DONE
        values = {
            "status": status,
            "reason": _row_reason(result, status),
            "claimed_by": "",
            "lease_until": None,
            "flags": connection.ops.adapt_json_value(list(result.flags), None),
            "num_segments": len(result.segments) if done else 0,
            "speech_duration": round(sum(record.end - record.start for record in result.segments), 6) if done else 0.0,
            "config_hash": config_hash if status in (Status.DONE, Status.NO_SPEECH) else "",
            "processed_at": db_now,
            "last_run": run.pk,
            "updated_at": db_now,
        }
        for name in _PROBED_FIELDS:
            value = getattr(result, name)
            if value not in ("", None):
                values[name] = value
        groups.setdefault(tuple(values), []).append([*values.values(), result.audio_file_id])
    table = connection.ops.quote_name(AudioFile._meta.db_table)
    key = connection.ops.quote_name(AudioFile._meta.pk.column)
    for names, rows in groups.items():
        assignments = ", ".join(f"{column} = %s" for column in _columns(AudioFile, names))
        cursor.executemany(f"UPDATE {table} SET {assignments} WHERE {key} = %s", rows)
