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
    """A claimed row: its id, path and the attempt number this claim started."""

    audio_file_id: int
    path: str
    attempt: int


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
        ids = list(candidates.values_list("id", flat=True)[:size])
        if not ids:
            return []
        AudioFile.objects.filter(id__in=ids, status=Status.PENDING).update(
            status=Status.PROCESSING,
            claimed_by=token,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=F("attempts") + 1,
            last_run=run,
            updated_at=now,
        )
        rows = AudioFile.objects.filter(id__in=ids, status=Status.PROCESSING, claimed_by=token)
        return [Claim(pk, path, attempts) for pk, path, attempts in rows.order_by("id").values_list("id", "path", "attempts")]


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
    with the status its row ended in. The statements are set-based, so a
    batch costs a few queries whatever its size.
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
        Segment.objects.bulk_create(
            Segment(
                audio_file_id=result.audio_file_id,
                run=run,
                index=record.index,
                start=record.start,
                end=record.end,
                duration=round(record.end - record.start, 6),
                path=record.path,
                peak_dbfs=record.peak_dbfs,
                rms_dbfs=record.rms_dbfs,
            )
            for result, status in recorded
            if status == Status.DONE
            for record in result.segments
        )
        _update_rows(recorded, run, config_hash, now)
        FileResult.objects.filter(run=run, audio_file_id__in=ids).delete()
        FileResult.objects.bulk_create(
            FileResult(
                run=run,
                audio_file_id=result.audio_file_id,
                status=status,
                reason=_row_reason(result, status),
                elapsed=result.elapsed,
                num_segments=len(result.segments) if status == Status.DONE else 0,
            )
            for result, status in recorded
        )
    return recorded


def _row_reason(result: PrepResult, status: str) -> str:
    return result.reason if status in (Status.FAILED, Status.PENDING) else ""


# Columns a result sets only when the worker learned their value.
_PROBED_FIELDS = ("size_bytes", "checksum", "container", "codec", "sample_rate", "channels", "duration")


def _update_rows(recorded: list[tuple[PrepResult, str]], run: PrepRun, config_hash: str, now) -> None:
    """Write the outcome of each recorded result to its row with one prepared UPDATE per set of columns.

    Values go through each model field's own database conversion, as
    `Model.save()` would do.
    """
    meta = AudioFile._meta
    groups: dict[tuple[str, ...], list[list]] = {}
    for result, status in recorded:
        done = status == Status.DONE
        values = {
            "status": status,
            "reason": _row_reason(result, status),
            "claimed_by": "",
            "lease_until": None,
            "flags": list(result.flags),
            "num_segments": len(result.segments) if done else 0,
            "speech_duration": round(sum(record.end - record.start for record in result.segments), 6) if done else 0.0,
            "config_hash": config_hash if status in (Status.DONE, Status.NO_SPEECH) else "",
            "processed_at": now,
            "last_run": run.pk,
            "updated_at": now,
        }
        for name in _PROBED_FIELDS:
            value = getattr(result, name)
            if value not in ("", None):
                values[name] = value
        names = tuple(values)
        params = [meta.get_field(name).get_db_prep_save(value, connection) for name, value in values.items()]
        groups.setdefault(names, []).append([*params, result.audio_file_id])
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for names, rows in groups.items():
            assignments = ", ".join(f"{quote(meta.get_field(name).column)} = %s" for name in names)
            cursor.executemany(f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s", rows)
