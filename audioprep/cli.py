"""Command-line entry point outside manage.py, built with python-fire.

    python -m audioprep prepare_audio --num_workers 4
    python -m audioprep import_audio /data/recordings

It sets Django up (DJANGO_SETTINGS_MODULE, default `project.settings`) and
calls the same functions as the management commands, so validation and the
run record are the same.
"""

from __future__ import annotations

import os
import sys


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()


def prepare_audio(
    num_workers: int | None = None,
    model_for_vad: str | None = None,
    output_dir: str | None = None,
    vad_aggressiveness: int | None = None,
    min_speech_ms: int | None = None,
    min_silence_ms: int | None = None,
    pad_ms: int | None = None,
    pad_start_ms: int | None = None,
    pad_end_ms: int | None = None,
    max_segment_s: float | None = None,
    energy_gate_db: float | None = None,
    speech_threshold: float | None = None,
    release_threshold: float | None = None,
    gate_bypass_score: float | None = None,
    confirm_score: float | None = None,
    min_confirm_ms: int | None = None,
    merge_target_s: float | None = None,
    merge_max_gap_ms: int | None = None,
    channel: str | None = None,
    limit: int | None = None,
    retry_failed: bool = False,
    recover_stale: bool = False,
    dry_run: bool = False,
    verbosity: int = 1,
) -> None:
    """Prepare pending audio files; exits with the status manage.py prepare_audio documents."""
    values = dict(locals())
    _setup_django()
    from django.core.management.base import OutputWrapper

    from . import service
    from .runs import EXIT_NOT_STARTED

    options = _parse_like_manage_py(values)
    stdout = OutputWrapper(sys.stdout)
    try:
        summary = service.prepare(options, stdout=stdout)
    except service.PrepareUsageError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(EXIT_NOT_STARTED) from exc
    if summary is not None and summary.exit_code:
        sys.stderr.write(f"error: {service.failure_message(summary)}\n")
        raise SystemExit(summary.exit_code)


def _parse_like_manage_py(values: dict) -> dict:
    """Check and convert fire's values with the parser manage.py uses; exit 2 on a bad value."""
    import argparse

    from . import service

    parser = argparse.ArgumentParser(prog="python -m audioprep prepare_audio")
    service.add_prepare_arguments(parser)
    parser.add_argument("--verbosity", type=int, choices=[0, 1, 2, 3], default=1)
    argv = []
    for name, value in values.items():
        if value is None or value is False:
            continue
        argv.append(f"--{name}")
        if value is not True:
            argv.append(str(value))
    return vars(parser.parse_args(argv))


def _reject_unknown_options(command, argv: list[str]) -> None:
    """Exit 2 before any work when argv names an option `command` does not take.

    python-fire reports unused arguments only after the function has run,
    which for prepare_audio would mean a whole run with default settings.
    """
    import inspect

    known = set(inspect.signature(command).parameters) | {"help"}
    for token in argv:
        if token == "--":
            return
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        if name.startswith("no") and name[2:] in known:
            continue
        if name not in known:
            sys.stderr.write(f"error: unknown option {token.split('=', 1)[0]}; see 'python -m audioprep {command.__name__} --help'\n")
            raise SystemExit(2)


def import_audio(*paths: str, from_file: str | None = None) -> None:
    """Register audio files from folders, files or globs."""
    _setup_django()
    from .importer import import_paths

    counts = import_paths(paths, [from_file] if from_file else [])
    for source in counts.missing:
        sys.stderr.write(f"not found: {source}\n")
    sys.stdout.write(f"{counts.new} new, {counts.known} already known, {counts.ignored} ignored (extension not selected)\n")
    if counts.missing:
        # The same status as manage.py import_audio, whose CommandError exits with 1.
        raise SystemExit(1)


def main() -> None:
    import fire

    commands = {"prepare_audio": prepare_audio, "import_audio": import_audio}
    if len(sys.argv) > 1 and sys.argv[1] in commands:
        _reject_unknown_options(commands[sys.argv[1]], sys.argv[2:])
    fire.Fire(commands)


if __name__ == "__main__":
    main()
