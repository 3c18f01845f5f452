"""Staff-only downloads: segment audio (with HTTP Range support) and run logs."""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from .models import PrepRun, Segment

RANGE_PATTERN = re.compile(r"bytes=(\d*)-(\d*)$")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _require_view(request, model) -> None:
    if not request.user.has_perm(f"audioprep.view_{model._meta.model_name}"):
        raise PermissionDenied


def _ranged_response(request, path: Path, content_type: str) -> HttpResponse:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise Http404("file not found on disk") from exc
    header = request.headers.get("Range", "")
    match = RANGE_PATTERN.match(header.strip()) if header else None
    if not match or (not match.group(1) and not match.group(2)):
        response = FileResponse(open(path, "rb"), content_type=content_type)
        response["Accept-Ranges"] = "bytes"
        return response
    first, last = match.groups()
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    else:
        start = max(0, size - int(last))
        end = size - 1
    if start >= size or start > end:
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    with open(path, "rb") as stream:
        stream.seek(start)
        data = stream.read(end - start + 1)
    response = HttpResponse(data, status=206, content_type=content_type)
    response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Accept-Ranges"] = "bytes"
    return response


@require_GET
@staff_member_required
def segment_audio(request, segment_id: int) -> HttpResponse:
    _require_view(request, Segment)
    segment = get_object_or_404(Segment.objects.select_related("run"), pk=segment_id)
    path = Path(segment.path)
    # Serve only files inside the output folder of the run that wrote them.
    if segment.run is None or not segment.run.output_dir or not _inside(path, Path(segment.run.output_dir)):
        raise Http404("segment file is outside its output folder")
    return _ranged_response(request, path, "audio/wav")


@require_GET
@staff_member_required
def run_log(request, run_id: int) -> HttpResponse:
    _require_view(request, PrepRun)
    run = get_object_or_404(PrepRun, pk=run_id)
    path = Path(run.log_path)
    if not run.output_dir or not _inside(path, Path(run.output_dir)) or not path.is_file():
        raise Http404("log file not found")
    return _ranged_response(request, path, "text/plain; charset=utf-8")


def read_tail(path: str, max_bytes: int = 20000) -> str:
    """Return the last `max_bytes` of a text file, starting at a line boundary."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - max_bytes))
            data = stream.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes and "\n" in text:
        text = text.split("\n", 1)[1]
    return text
