"""Option parsing and the prepare run, shared by manage.py and the fire CLI."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from django.core.management.color import no_style
from django.db import connections
from loguru import logger

from . import conf
from .ledger import count_pending
from .pipeline.config import PrepConfig
from .pipeline.errors import counted
from .prepare_audio import PrepareAudio, RunStartError
from .runs import EXIT_NOT_STARTED, RunSummary

VERBOSITY_LOG_LEVELS = {0: "ERROR", 1: "WARNING", 2: "INFO", 3: "DEBUG"}
# Option name -> PrepConfig field, for the segmentation policy. The model
# is among them because the policy defaults depend on the detector.
POLICY_OPTIONS = {
    "model_for_vad": "vad_model",
    "vad_aggressiveness": "vad_aggressiveness",
    "min_speech_ms": "min_speech_ms",
    "min_silence_ms": "min_silence_ms",
    "pad_ms": "pad_ms",
    "pad_start_ms": "pad_start_ms",
    "pad_end_ms": "pad_end_ms",
    "max_segment_s": "max_segment_s",
    "energy_gate_db": "energy_gate_db",
    "speech_threshold": "speech_threshold",
    "release_threshold": "release_threshold",
    "gate_bypass_score": "gate_bypass_score",
    "confirm_score": "confirm_score",
    "min_confirm_ms": "min_confirm_ms",
    "merge_target_s": "merge_target_s",
    "merge_max_gap_ms": "merge_max_gap_ms",
    "channel": "channel",
}


class PrepareUsageError(Exception):
    """An option is invalid or the run could not start."""


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add prepare_audio's options; both spellings of each dashed name work."""

    def option(name: str, **kwargs) -> None:
        dashed = "--" + name.replace("_", "-")
        underscored = "--" + name
        flags = [underscored] if dashed == underscored else [underscored, dashed]
        parser.add_argument(*flags, dest=name, **kwargs)

    option("num_workers", type=int, default=None, help="Worker processes (default: AUDIOPREP['NUM_WORKERS']).")
    option(
        "model_for_vad",
        default=None,
        help="'webrtc' (default) or the path of a Silero VAD model in ONNX form.",
    )
    option("output_dir", default=None, help="Folder for segments, manifests and run logs (default: AUDIOPREP['OUTPUT_DIR']).")
    option("vad_aggressiveness", type=int, choices=[0, 1, 2, 3], default=None, help="webrtcvad mode, 0 (least) to 3 (most aggressive).")
    option("min_speech_ms", type=int, default=None, help="Drop speech spans shorter than this many milliseconds.")
    option("min_silence_ms", type=int, default=None, help="Split where silence lasts at least this many milliseconds (default: 400 for webrtc, 300 for Silero).")
    option("pad_ms", type=int, default=None, help="Milliseconds of context kept before and after each segment (sets both --pad_start_ms and --pad_end_ms).")
    option("pad_start_ms", type=int, default=None, help="Milliseconds of context kept before each segment (default: 100 for webrtc, 80 for Silero).")
    option("pad_end_ms", type=int, default=None, help="Milliseconds of context kept after each segment (default: 100 for webrtc, 0 for Silero).")
    option("max_segment_s", type=float, default=None, help="Maximum segment length in seconds; longer spans are cut at the quietest pause.")
    option("energy_gate_db", type=float, default=None, help="Frames scoring below --gate_bypass_score must be this many dB above the running noise floor to count as speech (0: off; default: 3 for webrtc, 0 for Silero).")
    option("speech_threshold", type=float, default=None, help="Frame score (0-1) at which speech starts; webrtc scores a frame it accepts 0.5 or more.")
    option("release_threshold", type=float, default=None, help="Frame score (0-1) below which speech ends.")
    option("gate_bypass_score", type=float, default=None, help="Frames scoring at least this (0-1) skip the energy gate; for webrtc 0.75 means voicing strength 0.5.")
    option("confirm_score", type=float, default=None, help="Frame score (0-1) that counts towards --min_confirm_ms; for webrtc 0.85 means voicing strength 0.7.")
    option("min_confirm_ms", type=int, default=None, help="Drop speech spans with fewer than this many milliseconds of frames scoring --confirm_score or more (default: 120 for webrtc, 0 for Silero).")
    option("merge_target_s", type=float, default=None, help="Join neighbouring segments while the result lasts at most this many seconds (0: off, the default).")
    option("merge_max_gap_ms", type=int, default=None, help="Join only segments at most this many milliseconds apart (default 1000).")
    option("channel", choices=["mix", "left", "right"], default=None, help="Multichannel policy: downmix (mix) or take one channel.")
    option("limit", type=int, default=None, help="Prepare at most this many files.")
    option("retry_failed", action="store_true", help="Set failed files back to pending before the run.")
    option("recover_stale", action="store_true", help="Take back every file left processing by runs that died, without waiting for the lease.")
    option("dry_run", action="store_true", help="Show what would be prepared and change nothing.")


def build_config(options: dict[str, Any]) -> PrepConfig:
    values = dict(conf.get("SEGMENTATION")) | {"vad_model": conf.get("VAD_MODEL")}
    for option_name, field_name in POLICY_OPTIONS.items():
        if options.get(option_name) is not None:
            values[field_name] = options[option_name]
    try:
        return PrepConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise PrepareUsageError(f"invalid segmentation option: {exc}") from exc


def configure_stderr_log(verbosity: int) -> None:
    """Send log records of the chosen level to stderr (verbosity 0-3)."""
    logger.remove()
    level = VERBOSITY_LOG_LEVELS.get(verbosity, "DEBUG")
    logger.add(sys.stderr, level=level, format="{time:HH:mm:ss} | {level: <8} | {message}", diagnose=False, backtrace=False)


def _progress_printer(stream, planned: int):
    def show(progress: RunSummary) -> None:
        finished = progress.num_selected
        stream.write(
            f"\r  {finished}/{planned} files: {progress.num_done} done, {progress.num_no_speech} no speech, "
            f"{progress.num_failed} failed, {progress.num_segments} segments",
            ending="",
        )
        stream.flush()

    return show


def prepare(options: dict[str, Any], stdout=None, style=None, progress_stream=None) -> RunSummary | None:
    """Validate options, run PrepareAudio, print the summary; return it (None for a dry run)."""
    style = style or no_style()
    verbosity = int(options.get("verbosity", 1))
    config = build_config(options)
    num_workers = options.get("num_workers")
    if num_workers is None:
        num_workers = int(conf.get("NUM_WORKERS"))
    if num_workers < 1:
        raise PrepareUsageError(f"--num_workers must be at least 1, got {num_workers}")
    limit = options.get("limit")
    if limit is not None and limit < 0:
        raise PrepareUsageError(f"--limit must be 0 or more, got {limit}")
    output_dir = Path(options.get("output_dir") or conf.output_dir()).expanduser().resolve()
    model_for_vad = options.get("model_for_vad")
    configure_stderr_log(verbosity)

    if options.get("dry_run"):
        return _dry_run(options, config, model_for_vad, num_workers, limit, output_dir, stdout)

    progress = None
    if progress_stream is not None:
        planned = count_pending() if limit is None else limit
        progress = _progress_printer(progress_stream, planned)
    preparer = PrepareAudio(
        config,
        limit=limit,
        retry_failed=options.get("retry_failed", False),
        recover_stale=options.get("recover_stale", False),
        on_progress=progress,
        log_level="DEBUG" if verbosity >= 3 else "INFO",
    )
    # From here on all ORM work goes through the run's database thread. A
    # connection this thread left open would be inherited by forked workers,
    # so it is closed unless a transaction still needs it.
    if not any(conn.in_atomic_block for conn in connections.all(initialized_only=True)):
        connections.close_all()
    try:
        asyncio.run(preparer.fetch(model_for_vad=model_for_vad, output_dir=output_dir, num_workers=num_workers))
    except RunStartError as exc:
        raise PrepareUsageError(f"the run could not start: {exc}") from exc
    summary = preparer.summary
    if progress_stream is not None:
        progress_stream.write("")
    if stdout is not None and verbosity >= 1:
        stdout.write(_styled(style, summary)(summary.line()))
    return summary


def _dry_run(options, config, model_for_vad, num_workers, limit, output_dir, stdout) -> None:
    """Check what a real run would check and report what it would prepare; change nothing."""
    from .models import AudioFile
    from .prepare_audio import check_environment, resolve_config

    try:
        config = resolve_config(config, model_for_vad)
        check_environment(config)
    except (RunStartError, ValueError) as exc:
        raise PrepareUsageError(f"the run could not start: {exc}") from exc
    pending = count_pending()
    kinds = "pending"
    if options.get("retry_failed"):
        pending += AudioFile.objects.filter(status=AudioFile.Status.FAILED).count()
        kinds = "pending or failed"
    if options.get("recover_stale"):
        pending += AudioFile.objects.filter(status=AudioFile.Status.PROCESSING).count()
        kinds += " or stale"
    planned = pending if limit is None else min(pending, limit)
    if stdout is not None:
        stdout.write(
            f"dry run: would prepare {planned} of {counted(pending, kinds + ' file')} with {counted(num_workers, 'worker')} into "
            f"{output_dir}; VAD {config.vad_model}; parameters {config.as_dict()}"
        )
    return None


def _styled(style, summary: RunSummary):
    if summary.exit_code == EXIT_NOT_STARTED or summary.num_failed:
        return style.ERROR if summary.num_failed == summary.num_selected and summary.num_selected else style.WARNING
    if summary.status != "completed":
        return style.WARNING
    return style.SUCCESS


def failure_message(summary: RunSummary) -> str:
    if summary.status == "interrupted":
        return f"run {summary.run_id} interrupted; unfinished files are pending again (log: {summary.log_path})"
    if summary.status == "aborted":
        return f"run {summary.run_id} aborted: {summary.reason} (log: {summary.log_path})"
    return (
        f"{counted(summary.num_failed, 'file')} of {summary.num_selected} failed; their reasons are on the AudioFile rows "
        f"and in the run log {summary.log_path}; rerun with --retry_failed after fixing them"
    )
