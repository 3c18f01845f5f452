"""Open and close `PrepRun` rows and write the manifests.

These functions are synchronous; `PrepareAudio` calls them from its
database thread.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.db.models import Count, Max, Q, Sum
from django.utils import timezone

from .models import AudioFile, FileResult, PrepRun, Segment
from .pipeline.config import PrepConfig
from .pipeline.errors import counted, format_duration

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_LOCK_NAME = ".manifest.lock"
MANIFESTS_DIRNAME = "manifests"
LOGS_DIRNAME = "logs"

# Exit status of prepare_audio, also stated in its --help.
EXIT_OK = 0
EXIT_FILES_FAILED = 1
EXIT_NOT_STARTED = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


@dataclass
class RunSummary:
    """Counts and totals of a finished run, as shown on the last line of output."""

    run_id: int | None
    status: str
    num_selected: int = 0
    num_done: int = 0
    num_no_speech: int = 0
    num_failed: int = 0
    num_skipped: int = 0
    num_released: int = 0
    num_segments: int = 0
    audio_seconds: float = 0.0
    speech_seconds: float = 0.0
    elapsed: float = 0.0
    log_path: str = ""
    manifest_path: str = ""
    reason: str = ""
    exit_code: int = EXIT_OK

    def line(self) -> str:
        return (
            f"run {self.run_id} {self.status}: {counted(self.num_selected, 'file')}, {self.num_done} done, "
            f"{self.num_no_speech} no speech, {self.num_failed} failed, {self.num_skipped} skipped, "
            f"{self.num_released} released; "
            f"{counted(self.num_segments, 'segment')}, {format_duration(self.speech_seconds)} speech from "
            f"{format_duration(self.audio_seconds)} audio in {self.elapsed:.1f} s"
        )


def open_run(config: PrepConfig, num_workers: int, output_dir: Path) -> PrepRun:
    run = PrepRun.objects.create(
        status=PrepRun.Status.RUNNING,
        config=config.as_dict(),
        config_hash=config.config_hash(),
        num_workers=num_workers,
        vad_model=config.vad_model,
        output_dir=str(output_dir),
        host=socket.gethostname()[:255],
        pid=os.getpid(),
    )
    run.log_path = str(output_dir / LOGS_DIRNAME / f"run-{run.pk:06d}.log")
    run.save(update_fields=["log_path"])
    return run


def record_abort(run: PrepRun, reason: str) -> None:
    run.status = PrepRun.Status.ABORTED
    run.reason = reason[:300]
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "reason", "finished_at"])


def finalize_run(run: PrepRun, status: str, reason: str = "") -> RunSummary:
    """Store counts and totals from this run's file results and close the run.

    A file counts as released when this run claimed it last and it is
    pending again (handed back after a stop, or requeued for a retry that
    this run did not get to).
    """
    num_released = AudioFile.objects.filter(last_run=run, status=AudioFile.Status.PENDING).count()
    counts = FileResult.objects.filter(run=run).aggregate(
        selected=Count("id"),
        done=Count("id", filter=Q(status=AudioFile.Status.DONE)),
        no_speech=Count("id", filter=Q(status=AudioFile.Status.NO_SPEECH)),
        failed=Count("id", filter=Q(status=AudioFile.Status.FAILED)),
        skipped=Count("id", filter=Q(status=AudioFile.Status.SKIPPED)),
        segments=Sum("num_segments"),
    )
    files = AudioFile.objects.filter(results__run=run, results__status__in=AudioFile.TERMINAL)
    totals = files.aggregate(audio=Sum("duration"))
    speech = Segment.objects.filter(run=run).aggregate(seconds=Sum("duration"))
    run.num_done = counts["done"]
    run.num_no_speech = counts["no_speech"]
    run.num_failed = counts["failed"]
    run.num_skipped = counts["skipped"]
    run.num_released = num_released
    # Requeued results (a worker died, attempts left) are not terminal; the
    # file counts once, in its final state, in the run that ends it.
    run.num_selected = run.num_done + run.num_no_speech + run.num_failed + run.num_skipped + num_released
    run.num_segments = counts["segments"] or 0
    run.audio_seconds = round(totals["audio"] or 0.0, 3)
    run.speech_seconds = round(speech["seconds"] or 0.0, 3)
    run.status = status
    run.reason = reason[:300]
    run.finished_at = timezone.now()
    run.save()
    return summarize(run)


def _process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_abandoned_runs(current: PrepRun, lease_seconds: int) -> list[int]:
    """Close the records of runs that died without closing them (kill -9, power loss); return their ids.

    A run still marked running is abandoned when none of its claims is left;
    the caller takes back stale claims first. On this host its process must
    also be gone. A run on another host must also have written no result
    for a whole lease period. Its counts are filled from its file results
    and it ends `interrupted`.
    """
    closed = []
    host = socket.gethostname()[:255]
    quiet_since = timezone.now() - timedelta(seconds=lease_seconds)
    for run in PrepRun.objects.filter(status=PrepRun.Status.RUNNING).exclude(pk=current.pk):
        if AudioFile.objects.filter(status=AudioFile.Status.PROCESSING, last_run=run).exists():
            continue
        if run.host == host:
            if _process_alive(run.pid):
                continue
        else:
            last = FileResult.objects.filter(run=run).order_by("-created_at").values_list("created_at", flat=True).first()
            if (last or run.started_at) > quiet_since:
                continue
        finalize_run(run, PrepRun.Status.INTERRUPTED, f"run: its process stopped without closing the run; closed by run {current.pk}")
        closed.append(run.pk)
    return closed


def other_claims_notes(current: PrepRun) -> list[tuple[str, str]]:
    """Return (log level, text) notes on the files that other runs still claim.

    A run on this host whose process is gone gets a warning, because its
    files wait for their leases or for --recover_stale. A run that may still
    be preparing its files gets an info note.
    """
    host = socket.gethostname()[:255]
    claims = (
        AudioFile.objects.filter(status=AudioFile.Status.PROCESSING)
        .exclude(last_run=current)
        .values("last_run")
        .annotate(count=Count("id"), until=Max("lease_until"))
        .order_by("last_run")
    )
    notes = []
    for entry in claims:
        run = PrepRun.objects.filter(pk=entry["last_run"]).first()
        files = counted(entry["count"], "file")
        until = timezone.localtime(entry["until"]).strftime("%Y-%m-%d %H:%M:%S") if entry["until"] else "unknown"
        if run is not None and run.host == host and not _process_alive(run.pid):
            notes.append((
                "WARNING",
                f"{files} claimed by run {run.pk}, whose process {run.pid} is gone; they return to pending when "
                f"their leases expire ({until}), or now with --recover_stale",
            ))
        else:
            name = f"run {run.pk}" if run is not None else "a deleted run"
            notes.append(("INFO", f"{files} claimed by {name}, which may still be preparing them; their leases expire at {until} unless renewed"))
    return notes


def summarize(run: PrepRun) -> RunSummary:
    return RunSummary(
        run_id=run.pk,
        status=run.status,
        num_selected=run.num_selected,
        num_done=run.num_done,
        num_no_speech=run.num_no_speech,
        num_failed=run.num_failed,
        num_skipped=run.num_skipped,
        num_released=run.num_released,
        num_segments=run.num_segments,
        audio_seconds=run.audio_seconds,
        speech_seconds=run.speech_seconds,
        elapsed=run.elapsed or 0.0,
        log_path=run.log_path,
        manifest_path=run.manifest_path,
        reason=run.reason,
    )


def manifest_line(path: str, duration: float, source_id: int, source_path: str, index: int, start: float, end: float) -> str:
    """Return one manifest record as a JSON line (UTF-8 text, no ASCII escaping)."""
    record = {
        "audio_filepath": path,
        "duration": duration,
        "source_id": source_id,
        "source_path": source_path,
        "segment_index": index,
        "start": start,
        "end": end,
    }
    return json.dumps(record, ensure_ascii=False) + "\n"


def _write_if_changed(path: Path, lines) -> bool:
    """Write `lines` to `path` atomically unless it already contains exactly them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    with open(temporary, "w", encoding="utf-8", newline="\n") as stream:
        for line in lines:
            stream.write(line)
            digest.update(line.encode("utf-8"))
        stream.flush()
        os.fsync(stream.fileno())
    if path.exists() and _file_digest(path) == digest.hexdigest():
        os.unlink(temporary)
        return False
    os.replace(temporary, path)
    return True


def _remove_stale_temporaries(output_dir: Path) -> None:
    """Delete manifest temporaries left by a run that was killed while writing."""
    for path in output_dir.glob(f".{MANIFEST_NAME}.*.tmp"):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _segment_lines(segments):
    rows = segments.order_by("audio_file_id", "index").values_list(
        "path", "duration", "audio_file_id", "audio_file__path", "index", "start", "end"
    )
    for values in rows.iterator(chunk_size=2000):
        yield manifest_line(*values)


def write_manifests(run: PrepRun, output_dir: Path) -> Path:
    """Write this run's manifest and refresh the manifest of all segments.

    `manifest.jsonl` lists every segment in the database whose file lives
    under `output_dir`; it is rewritten only when its content changes.
    `manifests/run-NNNNNN.jsonl` lists the segments this run wrote and is
    written only when there are any.
    """
    prefix = str(output_dir) + os.sep
    all_segments = Segment.objects.filter(path__startswith=prefix)
    manifest = output_dir / MANIFEST_NAME
    # Two runs ending at once into one folder: the lock makes the later
    # writer read the database after the earlier one wrote, so the last
    # manifest written is never missing segments.
    with open(output_dir / MANIFEST_LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _remove_stale_temporaries(output_dir)
        _write_if_changed(manifest, _segment_lines(all_segments))
    run_segments = all_segments.filter(run=run)
    if run_segments.exists():
        _write_if_changed(output_dir / MANIFESTS_DIRNAME / f"run-{run.pk:06d}.jsonl", _segment_lines(run_segments))
    run.manifest_path = str(manifest)
    run.save(update_fields=["manifest_path"])
    return manifest
