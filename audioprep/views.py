"""Staff-only downloads: segment audio and run logs (with HTTP Range support), file waveforms.

Every view needs a logged-in staff user with the model's view permission.
Anonymous and non-staff users are redirected to the admin login page, and
staff users without the permission get 403.
"""

from __future__ import annotations

import os
import re
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.utils.html import escape
from django.views.decorators.http import require_safe
from loguru import logger

from .models import AudioFile, PrepRun, Segment
from .pipeline.config import OUTPUT_SAMPLE_RATE
from .pipeline.errors import PrepError

RANGE_PATTERN = re.compile(r"bytes=(\d*)-(\d*)$")
STREAM_CHUNK_BYTES = 64 * 1024

# Waveform pictures decode at most this much audio per request, so a long
# recording costs a bounded amount of time and memory (10 min of 16 kHz int16
# samples is 19 MB).
WAVEFORM_MAX_SECONDS = 600
WAVEFORM_COLUMNS = 1000
WAVEFORM_PLOT_HEIGHT = 120
WAVEFORM_AXIS_HEIGHT = 20
WAVEFORM_TICK_STEPS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
WAVEFORM_MAX_TICKS = 10


class UnsatisfiableRange(Exception):
    """The requested byte range starts at or past the end of the file."""


def _inside(path: Path, folder: Path) -> bool:
    """Return whether `path`, with symbolic links and `..` resolved, lies under `folder`."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _require_view(request, model) -> None:
    if not request.user.has_perm(f"audioprep.view_{model._meta.model_name}"):
        raise PermissionDenied


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Return the inclusive (first, last) byte positions of a single-range `Range` header.

    Returns None when the whole file should be sent: no header, a form this
    parser does not read (several ranges, another unit) or an invalid range
    whose last position is before its first, which HTTP lets a server ignore.
    Raises UnsatisfiableRange when the range starts at or past the end of the
    file or is an empty suffix (`bytes=-0`).
    """
    match = RANGE_PATTERN.match(header.strip()) if header else None
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix_length = int(last)
        if suffix_length == 0 or size == 0:
            raise UnsatisfiableRange
        return max(0, size - suffix_length), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise UnsatisfiableRange
    end = min(int(last), size - 1) if last else size - 1
    return start, end


def _read_range(path: Path, start: int, end: int) -> Iterator[bytes]:
    with open(path, "rb") as stream:
        stream.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            block = stream.read(min(STREAM_CHUNK_BYTES, remaining))
            if not block:
                return
            remaining -= len(block)
            yield block


def ranged_response(request, path: Path, content_type: str) -> HttpResponse:
    """Send `path` whole (200) or the byte range the request names (206, or 416 if unsatisfiable)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise Http404("file not found on disk") from exc
    try:
        byte_range = parse_range(request.headers.get("Range", ""), size)
    except UnsatisfiableRange:
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        response["Accept-Ranges"] = "bytes"
        return response
    if byte_range is None:
        response = FileResponse(open(path, "rb"), content_type=content_type)
    else:
        start, end = byte_range
        response = StreamingHttpResponse(_read_range(path, start, end), status=206, content_type=content_type)
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Length"] = str(end - start + 1)
    response["Accept-Ranges"] = "bytes"
    return response


@require_safe
@staff_member_required
def segment_audio(request, segment_id: int) -> HttpResponse:
    _require_view(request, Segment)
    segment = get_object_or_404(Segment.objects.select_related("run"), pk=segment_id)
    path = Path(segment.path)
    # Serve only files inside the output folder of the run that wrote them.
    if segment.run is None or not segment.run.output_dir or not _inside(path, Path(segment.run.output_dir)):
        raise Http404("segment file is outside its output folder")
    return ranged_response(request, path, "audio/wav")


@require_safe
@staff_member_required
def run_log(request, run_id: int) -> HttpResponse:
    _require_view(request, PrepRun)
    run = get_object_or_404(PrepRun, pk=run_id)
    path = Path(run.log_path)
    if not run.log_path or not run.output_dir or not _inside(path, Path(run.output_dir)) or not path.is_file():
        raise Http404("log file not found")
    return ranged_response(request, path, "text/plain; charset=utf-8")


def read_tail(path: str, max_lines: int = 200, max_bytes: int = 64 * 1024) -> str:
    """Return the last `max_lines` lines of a text file, reading at most its last `max_bytes`.

    When the file is longer than `max_bytes`, the partial first line is
    dropped. Returns "" when the file cannot be read.
    """
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - max_bytes))
            data = stream.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]
    return "\n".join(lines[-max_lines:])


@require_safe
@staff_member_required
def file_waveform(request, audio_file_id: int) -> HttpResponse:
    """Draw the file's waveform as SVG, with its speech segments shaded."""
    _require_view(request, AudioFile)
    audio_file = get_object_or_404(AudioFile, pk=audio_file_id)
    segments = list(audio_file.segments.select_related("run").order_by("index"))
    max_samples = WAVEFORM_MAX_SECONDS * OUTPUT_SAMPLE_RATE
    try:
        samples, truncated = decode_source(audio_file.path, max_samples)
        source = "source"
    except PrepError as exc:
        logger.info("waveform of file {}: source not decoded ({}), so it is drawn from the segment files", audio_file.pk, exc.reason())
        samples, truncated = assemble_segments(audio_file, segments, max_samples)
        source = "segments"
    svg = render_waveform_svg(samples, segments, truncated, source, audio_file.duration)
    response = HttpResponse(svg, content_type="image/svg+xml; charset=utf-8")
    # The picture contains no script. The header also blocks scripts and external loads
    # when the SVG is opened directly as a page.
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    response["Cache-Control"] = "private, max-age=300"
    return response


def decode_source(path: str, max_samples: int) -> tuple[np.ndarray, bool]:
    """Decode at most `max_samples` 16 kHz mono samples of a source file.

    Returns the samples and whether the file goes on past them. Raises a
    PrepError subclass when the file is missing, not a regular file or not
    decodable.
    """
    from .pipeline.audio_io import PcmStream, check_source

    check_source(path)
    chunks: list[np.ndarray] = []
    seen = 0
    with PcmStream(path) as stream:
        for chunk in stream:
            chunks.append(chunk)
            seen += chunk.shape[0]
            if seen > max_samples:
                break
    samples = np.concatenate(chunks)[:max_samples] if chunks else np.zeros(0, dtype=np.int16)
    return samples, seen > max_samples


def assemble_segments(audio_file: AudioFile, segments: list[Segment], max_samples: int) -> tuple[np.ndarray, bool]:
    """Place the segment WAV files at their start times on a silent timeline.

    Used when the source cannot be decoded. Segment files outside their run's
    output folder, missing or not 16 kHz mono 16-bit are left out.
    """
    end = max([audio_file.duration or 0.0] + [segment.end for segment in segments])
    total = int(round(end * OUTPUT_SAMPLE_RATE))
    length = min(total, max_samples)
    timeline = np.zeros(length, dtype=np.int16)
    for segment in segments:
        path = Path(segment.path)
        if segment.run is None or not segment.run.output_dir or not _inside(path, Path(segment.run.output_dir)):
            continue
        offset = int(round(segment.start * OUTPUT_SAMPLE_RATE))
        if offset >= length:
            continue
        try:
            with wave.open(str(path), "rb") as stream:
                if (stream.getframerate(), stream.getnchannels(), stream.getsampwidth()) != (OUTPUT_SAMPLE_RATE, 1, 2):
                    continue
                frames = stream.readframes(min(stream.getnframes(), length - offset))
        except (OSError, EOFError, wave.Error):
            continue
        data = np.frombuffer(frames, dtype="<i2")
        timeline[offset : offset + data.shape[0]] = data
    return timeline, total > length


def column_extremes(samples: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the min and max sample of each of up to `columns` equal slices of `samples`."""
    columns = min(columns, samples.shape[0])
    if columns == 0:
        return np.zeros(0, dtype=np.int16), np.zeros(0, dtype=np.int16)
    # With at least one sample per column the start positions strictly
    # increase, which reduceat needs.
    starts = np.linspace(0, samples.shape[0], columns + 1)[:-1].astype(np.int64)
    return np.minimum.reduceat(samples, starts), np.maximum.reduceat(samples, starts)


def _tick_step(seconds: float) -> float:
    for step in WAVEFORM_TICK_STEPS:
        if seconds / step <= WAVEFORM_MAX_TICKS:
            return step
    return WAVEFORM_TICK_STEPS[-1]


def _tick_label(seconds: float) -> str:
    if seconds >= 60:
        minutes, rest = divmod(seconds, 60)
        return f"{int(minutes)}:{int(rest):02d}"
    return f"{seconds:g} s"


def render_waveform_svg(
    samples: np.ndarray, segments: list[Segment], truncated: bool, source: str, duration: float | None
) -> str:
    """Return an SVG document: min/max per pixel column, speech segments as shaded rectangles, a time axis."""
    width = WAVEFORM_COLUMNS
    height = WAVEFORM_PLOT_HEIGHT + WAVEFORM_AXIS_HEIGHT
    shown_seconds = samples.shape[0] / OUTPUT_SAMPLE_RATE
    pixels_per_second = width / shown_seconds if shown_seconds else 0.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="11">',
        f"<title>{escape(_waveform_title(segments, truncated, source, shown_seconds, duration))}</title>",
        f'<rect width="{width}" height="{WAVEFORM_PLOT_HEIGHT}" fill="#f8f8f8"/>',
    ]
    parts.extend(_speech_rectangles(segments, shown_seconds, pixels_per_second))
    parts.extend(_waveform_path(samples))
    parts.extend(_axis(shown_seconds, pixels_per_second))
    if truncated:
        parts.append(
            f'<text x="{width - 4}" y="12" text-anchor="end" fill="#ba2121">'
            f"first {shown_seconds:g} s of {duration or shown_seconds:g} s shown</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _speech_rectangles(segments: list[Segment], shown_seconds: float, pixels_per_second: float) -> list[str]:
    rectangles = []
    for segment in segments:
        if segment.start >= shown_seconds:
            continue
        left = segment.start * pixels_per_second
        right = min(segment.end, shown_seconds) * pixels_per_second
        rectangles.append(
            f'<rect class="speech" x="{left:.1f}" y="0" width="{max(right - left, 1.0):.1f}" '
            f'height="{WAVEFORM_PLOT_HEIGHT}" fill="#79aec8" fill-opacity="0.35"/>'
        )
    return rectangles


def _waveform_path(samples: np.ndarray) -> list[str]:
    """Return one SVG path with a vertical line from min to max for each pixel column."""
    minima, maxima = column_extremes(samples, WAVEFORM_COLUMNS)
    if not minima.shape[0]:
        return []
    middle = WAVEFORM_PLOT_HEIGHT / 2
    scale = middle / 32768.0
    column_width = WAVEFORM_COLUMNS / minima.shape[0]
    commands = []
    for column, (low, high) in enumerate(zip(minima.tolist(), maxima.tolist())):
        x = (column + 0.5) * column_width
        top = middle - high * scale
        bottom = middle - low * scale
        # Keep silent stretches visible as a thin line.
        if bottom - top < 1.0:
            top, bottom = top - 0.5, bottom + 0.5
        commands.append(f"M{x:.1f} {top:.1f}V{bottom:.1f}")
    stroke_width = max(column_width, 1.0)
    return [f'<path d="{"".join(commands)}" stroke="#264b5d" stroke-width="{stroke_width:.2f}" fill="none"/>']


def _waveform_title(segments: list[Segment], truncated: bool, source: str, shown_seconds: float, duration: float | None) -> str:
    origin = "decoded source" if source == "source" else "segment files (the source could not be decoded)"
    text = f"Waveform of {shown_seconds:.1f} s from the {origin}, {len(segments)} speech segments shaded"
    if truncated and duration:
        text += f"; the recording is {duration:.1f} s long"
    return text


def _axis(shown_seconds: float, pixels_per_second: float) -> list[str]:
    baseline = WAVEFORM_PLOT_HEIGHT
    parts = [f'<line x1="0" y1="{baseline}" x2="{WAVEFORM_COLUMNS}" y2="{baseline}" stroke="#999"/>']
    if shown_seconds <= 0:
        return parts
    step = _tick_step(shown_seconds)
    tick = 0.0
    while tick <= shown_seconds:
        x = tick * pixels_per_second
        anchor = "start" if tick == 0 else "middle"
        if x > WAVEFORM_COLUMNS - 20:
            anchor = "end"
        parts.append(f'<line x1="{x:.1f}" y1="{baseline}" x2="{x:.1f}" y2="{baseline + 4}" stroke="#999"/>')
        parts.append(f'<text x="{x:.1f}" y="{baseline + 15}" text-anchor="{anchor}" fill="#555">{_tick_label(tick)}</text>')
        tick += step
    return parts
