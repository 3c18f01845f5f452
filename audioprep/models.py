"""Source recordings, preparation runs, per-run file results and segments."""

from __future__ import annotations

from django.db import models


class AudioFile(models.Model):
    """One source recording and its state in the pipeline."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        PROCESSING = "processing", "processing"
        DONE = "done", "done"
        NO_SPEECH = "no_speech", "no speech"
        FAILED = "failed", "failed"
        SKIPPED = "skipped", "skipped"

    TERMINAL = (Status.DONE, Status.NO_SPEECH, Status.FAILED, Status.SKIPPED)

    path = models.TextField(unique=True, help_text="Path of the source file as registered.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    reason = models.CharField(max_length=300, blank=True, help_text="Why the file failed or was skipped, as a category, a colon and the detail.")
    size_bytes = models.BigIntegerField(null=True, blank=True)
    checksum = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the source bytes.")
    container = models.CharField(max_length=64, blank=True)
    codec = models.CharField(max_length=64, blank=True)
    sample_rate = models.PositiveIntegerField(null=True, blank=True, help_text="Source sample rate in Hz.")
    channels = models.PositiveSmallIntegerField(null=True, blank=True)
    duration = models.FloatField(null=True, blank=True, help_text="Seconds of audio decoded from the source.")
    speech_duration = models.FloatField(null=True, blank=True, help_text="Seconds of audio in the file's segments.")
    num_segments = models.PositiveIntegerField(default=0)
    flags = models.JSONField(default=list, blank=True, help_text="Warnings such as header_mismatch or decode_warnings.")
    config_hash = models.CharField(max_length=16, blank=True, help_text="Parameter hash of the run that prepared the file.")
    attempts = models.PositiveIntegerField(default=0)
    claimed_by = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_run = models.ForeignKey("PrepRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["status", "id"]), models.Index(fields=["status", "lease_until"])]

    def __str__(self) -> str:
        return self.path

    @property
    def speech_ratio(self) -> float | None:
        if not self.duration or self.speech_duration is None:
            return None
        return min(1.0, self.speech_duration / self.duration)


class PrepRun(models.Model):
    """One run of the pipeline: its parameters, counts, timing and log."""

    class Status(models.TextChoices):
        RUNNING = "running", "running"
        COMPLETED = "completed", "completed"
        COMPLETED_WITH_ERRORS = "completed_with_errors", "completed with errors"
        INTERRUPTED = "interrupted", "interrupted"
        ABORTED = "aborted", "aborted"

    status = models.CharField(max_length=32, choices=Status.choices, default=Status.RUNNING, db_index=True)
    reason = models.CharField(max_length=300, blank=True, help_text="Why the run was aborted or interrupted.")
    config = models.JSONField(default=dict, help_text="Segmentation parameters.")
    config_hash = models.CharField(max_length=16, db_index=True)
    num_workers = models.PositiveIntegerField(default=1)
    vad_model = models.CharField(max_length=1024, default="webrtc")
    output_dir = models.TextField(blank=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    dry_run = models.BooleanField(default=False)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    num_selected = models.PositiveIntegerField(default=0, help_text="Files claimed by this run.")
    num_done = models.PositiveIntegerField(default=0)
    num_no_speech = models.PositiveIntegerField(default=0)
    num_failed = models.PositiveIntegerField(default=0)
    num_skipped = models.PositiveIntegerField(default=0)
    num_released = models.PositiveIntegerField(default=0, help_text="Files handed back unfinished after an interruption.")
    num_segments = models.PositiveIntegerField(default=0)
    audio_seconds = models.FloatField(default=0.0, help_text="Seconds of source audio decoded.")
    speech_seconds = models.FloatField(default=0.0, help_text="Seconds of audio written as segments.")
    log_path = models.TextField(blank=True)
    manifest_path = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        get_latest_by = "started_at"

    def __str__(self) -> str:
        return f"run {self.pk} ({self.status})"

    @property
    def elapsed(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class FileResult(models.Model):
    """Outcome of one file in one run, kept when the file is prepared again later."""

    run = models.ForeignKey(PrepRun, on_delete=models.CASCADE, related_name="results")
    audio_file = models.ForeignKey(AudioFile, on_delete=models.CASCADE, related_name="results")
    status = models.CharField(max_length=16, choices=AudioFile.Status.choices)
    reason = models.CharField(max_length=300, blank=True)
    elapsed = models.FloatField(default=0.0, help_text="Seconds the worker spent on the file.")
    num_segments = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["run", "audio_file"], name="audioprep_one_result_per_run_and_file")]

    def __str__(self) -> str:
        return f"run {self.run_id} file {self.audio_file_id}: {self.status}"


class Segment(models.Model):
    """One speech segment written as a 16 kHz mono 16-bit WAV file."""

    audio_file = models.ForeignKey(AudioFile, on_delete=models.CASCADE, related_name="segments")
    run = models.ForeignKey(PrepRun, on_delete=models.SET_NULL, null=True, related_name="segments")
    index = models.PositiveIntegerField()
    start = models.FloatField(help_text="Start in seconds of the source recording.")
    end = models.FloatField(help_text="End in seconds of the source recording.")
    duration = models.FloatField(help_text="Seconds.")
    path = models.TextField()
    peak_dbfs = models.FloatField()
    rms_dbfs = models.FloatField()

    class Meta:
        ordering = ["audio_file_id", "index"]
        constraints = [models.UniqueConstraint(fields=["audio_file", "index"], name="audioprep_one_segment_per_index")]

    def __str__(self) -> str:
        return f"{self.audio_file_id}#{self.index} [{self.start:.2f}-{self.end:.2f}]"
