"""`manage.py make_demo_audio FOLDER`: write generated demo recordings."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand

from ...demo.files import write_demo_files


class Command(BaseCommand):
    help = "Write a few generated speech-like recordings (WAV, FLAC, M4A, MP3, Opus, one without speech) into FOLDER."

    def add_arguments(self, parser) -> None:
        parser.add_argument("folder", help="Folder to write the recordings into (created if missing).")

    def handle(self, *args, **options) -> None:
        paths = write_demo_files(Path(options["folder"]))
        self.stdout.write(self.style.SUCCESS(f"wrote {len(paths)} demo recordings to {options['folder']}"))
