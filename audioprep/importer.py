"""Register audio files as `AudioFile` rows from folders, globs and path lists."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from . import conf
from .models import AudioFile

BATCH_SIZE = 1000


@dataclass
class ImportCounts:
    new: int = 0
    known: int = 0
    ignored: int = 0
    missing: list[str] = field(default_factory=list)


def _walk(folder: Path, extensions: tuple[str, ...], counts: ImportCounts) -> Iterator[str]:
    """Yield audio files under `folder`, following links but visiting each real folder once."""
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        try:
            info = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen:
            dirs[:] = []
            continue
        seen.add(key)
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(extensions):
                yield os.path.join(root, name)
            else:
                counts.ignored += 1


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def expand(sources: Iterable[str], extensions: tuple[str, ...], counts: ImportCounts, list_files: Iterable[str] = ()) -> Iterator[str]:
    """Yield absolute file paths named by folders, globs, files and list files."""
    for list_file in list_files:
        with open(list_file, encoding="utf-8") as stream:
            for line in stream:
                line = line.rstrip("\n")
                if line.strip() and not line.lstrip().startswith("#"):
                    yield os.path.abspath(line)
    for source in sources:
        if os.path.isdir(source):
            yield from (os.path.abspath(path) for path in _walk(Path(source), extensions, counts))
        elif os.path.isfile(source) or os.path.islink(source):
            yield os.path.abspath(source)
        elif _is_glob(source):
            for path in sorted(glob.glob(source, recursive=True)):
                if os.path.isdir(path):
                    yield from (os.path.abspath(item) for item in _walk(Path(path), extensions, counts))
                elif path.lower().endswith(extensions):
                    yield os.path.abspath(path)
                else:
                    counts.ignored += 1
        else:
            counts.missing.append(source)


def import_paths(sources: Iterable[str], list_files: Iterable[str] = (), extensions: Iterable[str] | None = None) -> ImportCounts:
    """Register every file found; files already registered are counted, not changed."""
    extensions = tuple(extension.lower() for extension in (extensions or conf.get("EXTENSIONS")))
    counts = ImportCounts()
    batch: list[str] = []
    seen: set[str] = set()
    for path in expand(sources, extensions, counts, list_files):
        if path in seen:
            continue
        seen.add(path)
        batch.append(path)
        if len(batch) >= BATCH_SIZE:
            _register(batch, counts)
            batch = []
    if batch:
        _register(batch, counts)
    return counts


def _register(paths: list[str], counts: ImportCounts) -> None:
    with transaction.atomic():
        known = set(AudioFile.objects.filter(path__in=paths).values_list("path", flat=True))
        new = [AudioFile(path=path) for path in paths if path not in known]
        AudioFile.objects.bulk_create(new, ignore_conflicts=True)
    counts.known += len(known)
    counts.new += len(new)
