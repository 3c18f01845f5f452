"""Admin pages: read-only run history, file review with segment players and waveforms."""

from __future__ import annotations

import json
from pathlib import Path

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from .models import AudioFile, FileResult, PrepRun, Segment
from .views import WAVEFORM_MAX_SECONDS, read_tail

LOG_TAIL_LINES = 200
# A run page lists at most this many file results and links to the full list.
RUN_RESULTS_SHOWN = 500
REQUEUE_STATUSES = (AudioFile.Status.FAILED, AudioFile.Status.SKIPPED)


class ReadOnlyMixin:
    """Admin for rows the pipeline writes: no adding, editing or deleting by hand.

    Deleting is off too, because a deleted row would leave its segment files
    and manifest lines on disk.
    """

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)}:{seconds:06.3f}" if minutes else f"{seconds:.3f} s"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _count_column(field: str, title: str):
    """Return a changelist column that shows the count `field` under a short header."""

    @admin.display(description=title, ordering=field)
    def column(self, run: PrepRun) -> int:
        return getattr(run, field)

    return column


def _player(segment: Segment) -> str:
    url = reverse("audioprep:segment-audio", args=[segment.pk])
    return format_html('<audio controls preload="none" src="{}"></audio>', url)


class SegmentInline(ReadOnlyMixin, admin.TabularInline):
    model = Segment
    extra = 0
    can_delete = False
    fields = ("index", "start_display", "end_display", "duration_display", "peak_dbfs", "rms_dbfs", "player", "file_name")
    readonly_fields = fields
    ordering = ("index",)

    @admin.display(description="start")
    def start_display(self, segment: Segment) -> str:
        return _seconds(segment.start)

    @admin.display(description="end")
    def end_display(self, segment: Segment) -> str:
        return _seconds(segment.end)

    @admin.display(description="duration")
    def duration_display(self, segment: Segment) -> str:
        return _seconds(segment.duration)

    @admin.display(description="audio")
    def player(self, segment: Segment) -> str:
        return _player(segment)

    @admin.display(description="file")
    def file_name(self, segment: Segment) -> str:
        return format_html('<span title="{}">{}</span>', segment.path, Path(segment.path).name)


class RunHistoryInline(ReadOnlyMixin, admin.TabularInline):
    """Every run that prepared the file, newest first."""

    model = FileResult
    extra = 0
    can_delete = False
    fields = ("run", "status", "reason", "elapsed_display", "num_segments", "created_at")
    readonly_fields = fields
    ordering = ("-id",)
    verbose_name = "run result"
    verbose_name_plural = "run history"

    def get_queryset(self, request) -> QuerySet:
        return super().get_queryset(request).select_related("run")

    @admin.display(description="elapsed")
    def elapsed_display(self, result: FileResult) -> str:
        return _seconds(result.elapsed)


@admin.register(AudioFile)
class AudioFileAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id", "path", "status", "reason", "duration_display", "sample_rate", "channels", "codec",
        "num_segments", "speech_ratio_display", "updated_at",
    )
    list_filter = ("status", "codec", "container", "updated_at")
    search_fields = ("path", "reason", "checksum")
    date_hierarchy = "created_at"
    list_per_page = 100
    readonly_fields = [field.name for field in AudioFile._meta.fields] + ["speech_ratio_display", "waveform"]
    fieldsets = (
        (None, {"fields": ("path", "status", "reason", "flags", "attempts", "last_run", "processed_at")}),
        ("Waveform", {"fields": ("waveform",)}),
        ("Audio", {"fields": (
            "container", "codec", "sample_rate", "channels", "duration", "speech_duration", "speech_ratio_display",
            "num_segments", "size_bytes", "checksum", "config_hash",
        )}),
        ("Claim", {"fields": ("claimed_by", "lease_until", "created_at", "updated_at"), "classes": ("collapse",)}),
    )
    inlines = [SegmentInline, RunHistoryInline]
    actions = ["requeue_files"]

    @admin.display(description="duration", ordering="duration")
    def duration_display(self, audio_file: AudioFile) -> str:
        return _seconds(audio_file.duration)

    @admin.display(description="speech ratio")
    def speech_ratio_display(self, audio_file: AudioFile) -> str:
        ratio = audio_file.speech_ratio
        return "-" if ratio is None else f"{ratio:.0%}"

    @admin.display(description="waveform")
    def waveform(self, audio_file: AudioFile) -> str:
        url = reverse("audioprep:file-waveform", args=[audio_file.pk])
        return format_html(
            '<img class="audioprep-waveform" src="{}" loading="lazy" width="1000" height="140" '
            'style="max-width: 100%; height: auto" alt="Waveform of file {} with speech segments shaded">'
            '<div class="help">Shaded: speech segments. At most the first {} minutes are drawn.</div>',
            url,
            audio_file.pk,
            WAVEFORM_MAX_SECONDS // 60,
        )

    @admin.action(description="Requeue selected failed or skipped files", permissions=["requeue"])
    def requeue_files(self, request, queryset: QuerySet) -> None:
        selected = queryset.count()
        requeued = queryset.filter(status__in=REQUEUE_STATUSES).update(
            status=AudioFile.Status.PENDING,
            reason="",
            attempts=0,
            claimed_by="",
            lease_until=None,
            updated_at=timezone.now(),
        )
        unchanged = selected - requeued
        if not requeued:
            self.message_user(
                request,
                f"No file requeued: none of the {_plural(selected, 'selected file')} is failed or skipped.",
                messages.WARNING,
            )
            return
        text = f"Set {_plural(requeued, 'file')} back to pending. The next prepare_audio run prepares them."
        if unchanged:
            text += f" {_plural(unchanged, 'other selected file')} left unchanged because not failed or skipped."
        self.message_user(request, text, messages.SUCCESS)

    def has_requeue_permission(self, request) -> bool:
        # ReadOnlyMixin turns off the admin's change permission, so the action
        # checks the model permission itself.
        return request.user.has_perm("audioprep.change_audiofile")


@admin.register(PrepRun)
class PrepRunAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id", "status", "started_at", "elapsed_display", "selected", "done", "no_speech", "failed", "skipped",
        "segments", "speech_hours",
    )
    list_filter = ("status", "started_at", "vad_model", "dry_run")
    search_fields = ("reason", "host", "config_hash")
    date_hierarchy = "started_at"
    readonly_fields = (
        "status", "reason", "dry_run", "started_at", "finished_at", "elapsed_display", "num_workers", "vad_model",
        "output_dir", "host", "pid", "num_selected", "num_done", "num_no_speech", "num_failed", "num_skipped",
        "num_released", "num_segments", "audio_seconds", "speech_seconds", "config_hash", "parameters", "log_link",
        "manifest_path", "log_tail",
    )
    fieldsets = (
        (None, {"fields": ("status", "reason", "dry_run", "started_at", "finished_at", "elapsed_display", "host", "pid")}),
        ("Counts", {"fields": (
            "num_selected", "num_done", "num_no_speech", "num_failed", "num_skipped", "num_released", "num_segments",
            "audio_seconds", "speech_seconds",
        )}),
        ("Parameters", {"fields": ("num_workers", "vad_model", "output_dir", "config_hash", "parameters")}),
        ("Outputs", {"fields": ("manifest_path", "log_link", "log_tail")}),
    )
    change_form_template = "admin/audioprep/preprun/change_form.html"

    selected = _count_column("num_selected", "selected")
    done = _count_column("num_done", "done")
    no_speech = _count_column("num_no_speech", "no speech")
    failed = _count_column("num_failed", "failed")
    skipped = _count_column("num_skipped", "skipped")
    segments = _count_column("num_segments", "segments")

    @admin.display(description="elapsed")
    def elapsed_display(self, run: PrepRun) -> str:
        return _seconds(run.elapsed)

    @admin.display(description="speech hours", ordering="speech_seconds")
    def speech_hours(self, run: PrepRun) -> str:
        return f"{run.speech_seconds / 3600:.3f}"

    @admin.display(description="parameters")
    def parameters(self, run: PrepRun) -> str:
        return format_html("<pre>{}</pre>", json.dumps(run.config, indent=2, sort_keys=True, ensure_ascii=False))

    @admin.display(description="log file")
    def log_link(self, run: PrepRun) -> str:
        if not run.log_path:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("audioprep:run-log", args=[run.pk]), run.log_path)

    @admin.display(description=f"log tail (last {LOG_TAIL_LINES} lines)")
    def log_tail(self, run: PrepRun) -> str:
        tail = read_tail(run.log_path, max_lines=LOG_TAIL_LINES) if run.log_path else ""
        return format_html('<pre class="audioprep-log-tail" style="max-height: 30em; overflow: auto; white-space: pre-wrap; overflow-wrap: anywhere">{}</pre>', tail or "(empty)")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = {**(extra_context or {}), **self._results_context(request, object_id)}
        return super().change_view(request, object_id, form_url, extra_context=context)

    def _results_context(self, request, object_id: str) -> dict:
        """Return the run's first file results for the change page's results table."""
        try:
            run_id = int(object_id)
        except (TypeError, ValueError):
            return {}
        results = FileResult.objects.filter(run_id=run_id).select_related("audio_file").order_by("id")
        total = results.count()
        return {
            "file_results": list(results[:RUN_RESULTS_SHOWN]),
            "file_results_total": total,
            "file_results_url": reverse("admin:audioprep_fileresult_changelist") + f"?run__id__exact={run_id}",
            "can_view_files": request.user.has_perm("audioprep.view_audiofile"),
            "can_view_results": request.user.has_perm("audioprep.view_fileresult"),
        }


@admin.register(FileResult)
class FileResultAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "run", "audio_file", "status", "reason", "elapsed", "num_segments", "created_at")
    list_filter = ("status", "run__status", "created_at")
    search_fields = ("audio_file__path", "reason")
    list_select_related = ("run", "audio_file")
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in FileResult._meta.fields]


@admin.register(Segment)
class SegmentAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "audio_file", "index", "start", "end", "duration", "rms_dbfs", "player")
    list_filter = ("run",)
    search_fields = ("audio_file__path", "path")
    list_select_related = ("audio_file",)
    readonly_fields = [field.name for field in Segment._meta.fields] + ["player"]

    @admin.display(description="audio")
    def player(self, segment: Segment) -> str:
        return _player(segment)
