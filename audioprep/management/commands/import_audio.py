"""`manage.py import_audio`: register audio files as pending AudioFile rows."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from ...importer import import_paths
from ...pipeline.errors import counted


class Command(BaseCommand):
    help = (
        "Register audio files from folders (searched recursively, extensions matched "
        "case-insensitively), globs or files. Files already registered are left unchanged."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("paths", nargs="*", help="Folders, files or glob patterns (quote globs to keep the shell off them).")
        parser.add_argument(
            "--from-file", "--from_file", dest="list_files", action="append", default=[],
            help="A UTF-8 text file with one path per line; may be repeated.",
        )
        parser.add_argument(
            "--extension", dest="extensions", action="append", default=None,
            help="Extension to register from folders, such as .wav; may be repeated (default: AUDIOPREP['EXTENSIONS']).",
        )

    def handle(self, *args, **options) -> None:
        if not options["paths"] and not options["list_files"]:
            raise CommandError("give at least one folder, file or glob, or --from-file LIST")
        try:
            counts = import_paths(options["paths"], options["list_files"], options["extensions"])
        except OSError as exc:
            raise CommandError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        for source in counts.missing:
            self.stderr.write(self.style.WARNING(f"not found: {source}"))
        self.stdout.write(
            self.style.SUCCESS(f"{counts.new} new, {counts.known} already known, {counts.ignored} ignored (extension not selected)")
        )
        if counts.missing and not counts.new and not counts.known:
            raise CommandError(f"none of the given paths exist: {', '.join(counts.missing)}")
        if counts.missing:
            raise CommandError(f"{counted(len(counts.missing), 'path')} not found (listed above); the files under the other paths are registered")
