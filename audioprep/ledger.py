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
    with the status its row ended in.
    """
    now = timezone.now()
    recorded = []
    with transaction.atomic():
        rows = AudioFile.objects.filter(
            id__in=[result.audio_file_id for result in results], status=Status.PROCESSING, claimed_by=token
        ).select_for_update()
        by_id = {row.id: row for row in rows}
        for result in results:
            row = by_id.get(result.audio_file_id)
            if row is None:
                logger.warning("file {}: claim lost before its result was recorded; result dropped", result.audio_file_id)
                continue
            status = _final_status(result, row.attempts, max_attempts)
            _apply_result(row, result, status, run, config_hash, now)
            recorded.append((result, status))
    return recorded


def _apply_result(row: AudioFile, result: PrepResult, status: str, run: PrepRun, config_hash: str, now) -> None:
    Segment.objects.filter(audio_file=row).delete()
    if status == Status.DONE:
        Segment.objects.bulk_create(
            Segment(
                audio_file=row,
                run=run,
                index=record.index,
                start=record.start,
                end=record.end,
                duration=round(record.end - record.start, 6),
                path=record.path,
                peak_dbfs=record.peak_dbfs,
                rms_dbfs=record.rms_dbfs,
            )
            for record in result.segments
        )
    row.status = status
    row.reason = result.reason if status in (Status.FAILED, Status.PENDING) else ""
    row.claimed_by = ""
    row.lease_until = None
    if result.size_bytes is not None:
        row.size_bytes = result.size_bytes
    for name in ("checksum", "container", "codec", "sample_rate", "channels", "duration"):
        value = getattr(result, name)
        if value not in ("", None):
            setattr(row, name, value)
    row.flags = list(result.flags)
    row.num_segments = len(result.segments) if status == Status.DONE else 0
    row.speech_duration = round(sum(record.end - record.start for record in result.segments), 6) if status == Status.DONE else 0.0
    row.config_hash = config_hash if status in (Status.DONE, Status.NO_SPEECH) else ""
    row.processed_at = now
    row.last_run = run
    row.save()
    FileResult.objects.update_or_create(
        run=run,
        audio_file=row,
        defaults={
            "status": status,
            "reason": row.reason,
            "elapsed": result.elapsed,
            "num_segments": row.num_segments,
        },
    )
