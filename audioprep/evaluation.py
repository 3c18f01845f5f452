"""Frame-level scoring of speech segments against reference speech intervals.

`evaluate_folder` runs the same per-file job as prepare_audio
(`process_audio_sync`, segment files written to a temporary folder) on every
audio file that has a JSON reference beside it, and scores the written
segments, padding included, against the reference `speech_fine` intervals.

Scores use a 10 ms grid: a grid frame is speech when its centre lies inside
an interval. With a collar, grid frames whose centre is within `collar_s`
of a reference boundary are left out of every count.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .pipeline.config import PrepConfig
from .pipeline.process import PrepTask, process_audio_sync

GRID_S = 0.01
DEFAULT_COLLAR_S = 0.25
REFERENCE_KEY = "speech_fine"
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
# Grid of the --sweep option: each name is a PrepConfig field.
SWEEP_GRID = {
    "min_silence_ms": (300, 400),
    "pad_start_ms": (50, 100),
    "pad_end_ms": (0, 50, 100),
    "energy_gate_db": (0.0, 3.0, 6.0),
}


@dataclass(frozen=True)
class FrameScores:
    """Frame-level counts and rates of one comparison.

    Rates whose denominator is zero are None: for example `miss_rate` and
    `detection_error_rate` when the reference contains no speech.
    """

    true_positive: int
    false_positive: int
    false_negative: int
    true_negative: int

    @property
    def precision(self) -> float | None:
        marked = self.true_positive + self.false_positive
        return self.true_positive / marked if marked else None

    @property
    def recall(self) -> float | None:
        reference = self.true_positive + self.false_negative
        return self.true_positive / reference if reference else None

    @property
    def f1(self) -> float:
        """Return the F1 score; 1.0 when neither side marks any frame as speech."""
        denominator = 2 * self.true_positive + self.false_positive + self.false_negative
        return 2 * self.true_positive / denominator if denominator else 1.0

    @property
    def false_alarm_rate(self) -> float | None:
        reference_nonspeech = self.false_positive + self.true_negative
        return self.false_positive / reference_nonspeech if reference_nonspeech else None

    @property
    def miss_rate(self) -> float | None:
        recall = self.recall
        return None if recall is None else 1.0 - recall

    @property
    def detection_error_rate(self) -> float | None:
        """Return (false alarm + miss) frames over reference speech frames."""
        reference = self.true_positive + self.false_negative
        return (self.false_positive + self.false_negative) / reference if reference else None

    def as_dict(self) -> dict:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "false_alarm_rate": self.false_alarm_rate,
            "miss_rate": self.miss_rate,
            "detection_error_rate": self.detection_error_rate,
            "true_positive": self.true_positive,
            "false_positive": self.false_positive,
            "false_negative": self.false_negative,
            "true_negative": self.true_negative,
        }


def intervals_to_grid(intervals, duration_s: float, grid_s: float = GRID_S) -> np.ndarray:
    """Return one bool per grid frame of `duration_s`: True where the frame centre is inside an interval."""
    num_frames = max(0, math.ceil(round(duration_s / grid_s, 6)))
    centres = (np.arange(num_frames) + 0.5) * grid_s
    marked = np.zeros(num_frames, dtype=bool)
    for start, end in intervals:
        marked |= (centres >= start) & (centres < end)
    return marked


def collar_mask(reference, duration_s: float, collar_s: float, grid_s: float = GRID_S) -> np.ndarray:
    """Return one bool per grid frame: True where the frame is scored (farther than `collar_s` from every reference boundary)."""
    num_frames = max(0, math.ceil(round(duration_s / grid_s, 6)))
    centres = (np.arange(num_frames) + 0.5) * grid_s
    scored = np.ones(num_frames, dtype=bool)
    if collar_s <= 0:
        return scored
    for boundary in itertools.chain.from_iterable(reference):
        scored &= np.abs(centres - boundary) > collar_s
    return scored


def score_frames(reference, hypothesis, duration_s: float, collar_s: float = 0.0) -> FrameScores:
    """Compare two lists of (start, end) intervals in seconds over `duration_s` seconds."""
    ref = intervals_to_grid(reference, duration_s)
    hyp = intervals_to_grid(hypothesis, duration_s)
    scored = collar_mask(reference, duration_s, collar_s)
    ref, hyp = ref[scored], hyp[scored]
    return FrameScores(
        true_positive=int(np.count_nonzero(ref & hyp)),
        false_positive=int(np.count_nonzero(~ref & hyp)),
        false_negative=int(np.count_nonzero(ref & ~hyp)),
        true_negative=int(np.count_nonzero(~ref & ~hyp)),
    )


def merge_intervals(intervals, max_gap_s: float = 0.0) -> list[tuple[float, float]]:
    """Return sorted intervals with those that overlap or lie at most `max_gap_s` apart joined."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start - merged[-1][1] <= max_gap_s:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def boundary_hit_rate(reference, hypothesis, tolerance_s: float = DEFAULT_COLLAR_S) -> float | None:
    """Return the share of reference starts and ends with a hypothesis start or end within `tolerance_s`.

    Starts are matched to starts and ends to ends. Hypothesis intervals that
    touch (pieces of one span cut at the maximum length) count as one.
    """
    if not reference:
        return None
    merged = merge_intervals(hypothesis, max_gap_s=1e-6)
    hyp_starts = np.array([start for start, _ in merged])
    hyp_ends = np.array([end for _, end in merged])
    hits = 0
    for start, end in reference:
        hits += bool(hyp_starts.size and np.min(np.abs(hyp_starts - start)) <= tolerance_s)
        hits += bool(hyp_ends.size and np.min(np.abs(hyp_ends - end)) <= tolerance_s)
    return hits / (2 * len(reference))


@dataclass
class FileEvaluation:
    """Scores of one file; `error` is set instead when the file failed."""

    name: str
    duration_s: float = 0.0
    num_reference: int = 0
    num_segments: int = 0
    strict: FrameScores | None = None
    collared: FrameScores | None = None
    boundary_hit_rate: float | None = None
    segments: list[tuple[float, float]] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "duration_s": self.duration_s,
            "num_reference": self.num_reference,
            "num_segments": self.num_segments,
            "strict": self.strict.as_dict() if self.strict else None,
            "collared": self.collared.as_dict() if self.collared else None,
            "boundary_hit_rate": self.boundary_hit_rate,
            "segments": [list(segment) for segment in self.segments],
            "error": self.error,
        }


def find_reference_files(folder: Path) -> list[tuple[Path, Path]]:
    """Return (audio, JSON) pairs of `folder`, sorted by name; audio without a JSON file is skipped."""
    pairs = []
    for audio in sorted(Path(folder).iterdir()):
        if audio.suffix.lower() not in AUDIO_SUFFIXES or not audio.is_file():
            continue
        reference = audio.with_suffix(".json")
        if reference.is_file():
            pairs.append((audio, reference))
    return pairs


def load_reference(path: Path, key: str = REFERENCE_KEY) -> list[tuple[float, float]]:
    """Read the `key` list of [start, end] pairs in seconds from a reference JSON file."""
    try:
        data = json.loads(Path(path).read_text())
        intervals = [(float(start), float(end)) for start, end in data[key]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"invalid reference file {path}: expected a JSON object with a {key!r} list of [start, end] pairs ({exc})") from exc
    return intervals


def evaluate_file(audio: Path, reference: list[tuple[float, float]], config: PrepConfig, work_dir: Path, collar_s: float = DEFAULT_COLLAR_S) -> FileEvaluation:
    """Prepare one file with `config` into `work_dir` and score its segments."""
    evaluation = FileEvaluation(name=audio.name, num_reference=len(reference))
    task = PrepTask(audio_file_id=0, path=str(audio), output_dir=str(work_dir), config=config)
    result = process_audio_sync(task)
    if result.status == "failed":
        evaluation.error = result.reason
        return evaluation
    duration = float(result.duration or 0.0)
    segments = [(record.start, record.end) for record in result.segments]
    evaluation.duration_s = duration
    evaluation.segments = segments
    evaluation.num_segments = len(segments)
    evaluation.strict = score_frames(reference, segments, duration)
    evaluation.collared = score_frames(reference, segments, duration, collar_s=collar_s)
    evaluation.boundary_hit_rate = boundary_hit_rate(reference, segments, collar_s)
    return evaluation


METRICS = ("precision", "recall", "f1", "false_alarm_rate", "miss_rate", "detection_error_rate")


def summarize(evaluations: list[FileEvaluation]) -> dict:
    """Return the mean over files of every metric, strict and collared (files without a value are left out)."""
    scored = [evaluation for evaluation in evaluations if not evaluation.error]

    def mean(values) -> float | None:
        values = [value for value in values if value is not None]
        return float(np.mean(values)) if values else None

    summary: dict = {"num_files": len(evaluations), "num_failed": len(evaluations) - len(scored)}
    for kind in ("strict", "collared"):
        summary[kind] = {metric: mean(getattr(getattr(e, kind), metric) for e in scored) for metric in METRICS}
    summary["num_segments"] = sum(evaluation.num_segments for evaluation in scored)
    summary["boundary_hit_rate"] = mean(evaluation.boundary_hit_rate for evaluation in scored)
    return summary


def evaluate_folder(folder: Path, config: PrepConfig, collar_s: float = DEFAULT_COLLAR_S, reference_key: str = REFERENCE_KEY) -> dict:
    """Prepare and score every audio file of `folder` that has a reference JSON file beside it.

    Returns {"config": ..., "files": [...], "summary": {...}}. Raises
    ValueError when the folder contains no such pair or a reference is invalid.
    """
    pairs = find_reference_files(Path(folder))
    if not pairs:
        raise ValueError(f"no audio file with a JSON reference of the same name found in {folder}")
    references = [(audio, load_reference(json_path, reference_key)) for audio, json_path in pairs]
    evaluations = []
    with tempfile.TemporaryDirectory(prefix="audioprep-evaluate-") as work_dir:
        for audio, reference in references:
            evaluations.append(evaluate_file(audio, reference, config, Path(work_dir), collar_s))
    return {
        "config": config.as_dict(),
        "collar_s": collar_s,
        "files": [evaluation.as_dict() for evaluation in evaluations],
        "summary": summarize(evaluations),
    }


def sweep_configs(base: PrepConfig, grid: dict = SWEEP_GRID) -> list[PrepConfig]:
    """Return one config per combination of `grid` values on top of `base`, skipping invalid ones."""
    names = list(grid)
    # The built pad_start_ms and pad_end_ms carry the padding, and a pad_ms
    # left in would conflict with grid values for either side.
    base_values = base.as_dict() | {"pad_ms": None}
    configs = []
    for values in itertools.product(*(grid[name] for name in names)):
        try:
            configs.append(PrepConfig.from_dict(base_values | dict(zip(names, values))))
        except ValueError:
            continue
    return configs
