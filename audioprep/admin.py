"""Admin pages: read-only run history, file review with segment players."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.urls import reverse
from django.utils.html import format_html

from .models import AudioFile, FileResult, PrepRun, Segment
from .views import read_tail


class ReadOnlyMixin:
    """Rows written by the pipeline are never added or edited by hand."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)}:{seconds:06.3f}" if minutes else f"{seconds:.3f} s"


def _player(segment: Segment) -> str:
    url = reverse("audioprep:segment-audio", args=[segment.pk])
    return format_html('<audio controls preload="none" src="{}"></audio>', url)


class SegmentInline(ReadOnlyMixin, admin.TabularInline):
    model = Segment
    extra = 0
    can_delete = False
    fields = ("index", "start", "end", "duration", "peak_dbfs", "rms_dbfs", "player", "path")
    readonly_fields = fields
    ordering = ("index",)

    @admin.display(description="audio")
    def player(self, segment: Segment) -> str:
        return _player(segment)


class FileResultInline(ReadOnlyMixin, admin.TabularInline):
    model = FileResult
    extra = 0
    can_delete = False
    fields = ("audio_file", "status", "reason", "elapsed", "num_segments", "created_at")
    readonly_fields = fields
    show_change_link = False


class RunHistoryInline(FileResultInline):
    fields = ("run", "status", "reason", "elapsed", "num_segments", "created_at")
    readonly_fields = fields
    verbose_name_plural = "run history"


@admin.register(AudioFile)
class AudioFileAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "path", "status", "reason", "duration_display", "sample_rate", "channels", "codec", "num_segments", "speech_ratio_display", "updated_at")
    list_filter = ("status", "codec", "container", "updated_at")
    search_fields = ("path", "reason", "checksum")
    date_hierarchy = "created_at"
    list_per_page = 100
    readonly_fields = [field.name for field in AudioFile._meta.fields] + ["speech_ratio_display"]
    inlines = [SegmentInline, RunHistoryInline]
    actions = ["requeue_files"]

    @admin.display(description="duration", ordering="duration")
    def duration_display(self, audio_file: AudioFile) -> str:
        return _seconds(audio_file.duration)

    @admin.display(description="speech ratio")
    def speech_ratio_display(self, audio_file: AudioFile) -> str:
        ratio = audio_file.speech_ratio
        return "-" if ratio is None else f"{ratio:.0%}"

    @admin.action(description="Requeue selected failed or skipped files", permissions=["requeue"])
    def requeue_files(self, request, queryset: QuerySet) -> None:
        eligible = queryset.filter(status__in=[AudioFile.Status.FAILED, AudioFile.Status.SKIPPED])
        count = eligible.update(status=AudioFile.Status.PENDING, reason="", attempts=0)
        skipped = queryset.count() - count
        level = messages.SUCCESS if count else messages.WARNING
        self.message_user(request, f"{count} files set to pending; {skipped} were not failed or skipped and stay as they are.", level)

    def has_requeue_permission(self, request) -> bool:
        return request.user.has_perm("audioprep.change_audiofile")


@admin.register(PrepRun)
class PrepRunAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "status", "started_at", "elapsed_display", "num_workers", "vad_model", "num_selected", "num_done", "num_no_speech", "num_failed", "num_segments", "speech_hours")
    list_filter = ("status", "started_at", "vad_model")
    search_fields = ("reason", "host", "config_hash")
    date_hierarchy = "started_at"
    readonly_fields = (
        "status", "reason", "started_at", "finished_at", "elapsed_display", "num_workers", "vad_model", "output_dir",
        "host", "pid", "num_selected", "num_done", "num_no_speech", "num_failed", "num_skipped", "num_released",
        "num_segments", "audio_seconds", "speech_seconds", "config_hash", "parameters", "log_link", "manifest_path", "log_tail",
    )
    fieldsets = (
        (None, {"fields": ("status", "reason", "started_at", "finished_at", "elapsed_display", "host", "pid")}),
        ("Counts", {"fields": ("num_selected", "num_done", "num_no_speech", "num_failed", "num_skipped", "num_released", "num_segments", "audio_seconds", "speech_seconds")}),
        ("Parameters", {"fields": ("num_workers", "vad_model", "output_dir", "config_hash", "parameters")}),
        ("Outputs", {"fields": ("manifest_path", "log_link", "log_tail")}),
    )
    inlines = [FileResultInline]

    @admin.display(description="elapsed")
    def elapsed_display(self, run: PrepRun) -> str:
        return _seconds(run.elapsed)

    @admin.display(description="speech hours", ordering="speech_seconds")
    def speech_hours(self, run: PrepRun) -> str:
        return f"{run.speech_seconds / 3600:.3f}"

    @admin.display(description="parameters")
    def parameters(self, run: PrepRun) -> str:
        return format_html("<pre>{}</pre>", json.dumps(run.config, indent=2, sort_keys=True))

    @admin.display(description="log file")
    def log_link(self, run: PrepRun) -> str:
        if not run.log_path:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("audioprep:run-log", args=[run.pk]), run.log_path)

    @admin.display(description="log tail")
    def log_tail(self, run: PrepRun) -> str:
        tail = read_tail(run.log_path) if run.log_path else ""
        return format_html('<pre style="max-height: 30em; overflow: auto">{}</pre>', tail or "(empty)")


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


