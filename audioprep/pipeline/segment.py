"""Segmentation policy: per-frame speech scores to padded speech segments.

The policy is one online state machine, so segments close while the audio
is still streaming and memory stays bounded by the maximum segment length:

1. A frame is speech when its score reaches `speech_threshold`; once in
   speech it stays speech until the score falls below `release_threshold`
   (hysteresis). With the energy gate on, a frame scoring below
   `gate_bypass_score` must also be `energy_gate_db` above the running noise
   floor.
2. A speech span closes after `min_silence_ms` without speech. Spans shorter
   than `min_speech_ms`, and spans with less than `min_confirm_ms` of frames
   scoring `confirm_score` or more, are dropped.
3. A span that would exceed `max_segment_s` (padding included) is cut at the
   quietest frame of its second half: the best pause, not a hard cut.
4. Each segment gets `pad_start_ms` of context before and `pad_end_ms`
   after. When a gap is too short for both, it is shared in proportion to
   the two paddings, so padded segments never overlap. Pieces of a cut span
   meet exactly at the cut, without padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import OUTPUT_SAMPLE_RATE, PrepConfig

# The noise floor is the 10th percentile of frame levels over this many
# seconds of recent audio.
NOISE_FLOOR_WINDOW_S = 10.0
NOISE_FLOOR_PERCENTILE = 10
# Frames are decided in blocks of this many seconds, and the noise floor is
# updated once per block. The blocks are counted from the first frame, so
# the segments do not depend on how the audio was split into chunks.
DECISION_BLOCK_S = 0.5
SILENCE_DBFS = -100.0


@dataclass(frozen=True)
class Span:
    """A segment in output samples: [start, end)."""

    start: int
    end: int


def frame_levels_dbfs(frames: np.ndarray) -> np.ndarray:
    """Return the RMS level of each int16 frame in dBFS (-100 for digital silence)."""
    values = frames.astype(np.float32) / 32768.0
    power = np.mean(values * values, axis=1)
    with np.errstate(divide="ignore"):
        levels = 10.0 * np.log10(power)
    return np.maximum(levels, SILENCE_DBFS)


class Segmenter:
    """Turn a stream of frame scores into closed, padded spans.

    Feed frames in order with `push()`; it returns the spans that became
    final. `finish()` closes the stream and returns the rest.
    `retain_from` is the first sample a future span can still include.
    """

    def __init__(self, config: PrepConfig) -> None:
        self.config = config
        frame_ms = config.frame_ms
        self.frame_samples = config.frame_samples
        self.min_speech_frames = math.ceil(config.min_speech_ms / frame_ms)
        self.min_silence_frames = math.ceil(config.min_silence_ms / frame_ms)
        self.min_confirm_frames = math.ceil(config.min_confirm_ms / frame_ms)
        self.pad_start_samples = config.pad_start_ms * OUTPUT_SAMPLE_RATE // 1000
        self.pad_end_samples = config.pad_end_ms * OUTPUT_SAMPLE_RATE // 1000
        max_samples = int(config.max_segment_s * OUTPUT_SAMPLE_RATE) - self.pad_start_samples - self.pad_end_samples
        self.max_core_frames = max(self.min_speech_frames + 1, max_samples // self.frame_samples)
        self.merge_target_samples = int(config.merge_target_s * OUTPUT_SAMPLE_RATE)
        self.merge_gap_samples = config.merge_max_gap_ms * OUTPUT_SAMPLE_RATE // 1000
        # A released span that later spans may still be merged into.
        self._merging: Span | None = None
        self.num_frames = 0
        self._in_speech = False
        self.block_frames = max(1, round(DECISION_BLOCK_S * 1000 / frame_ms))
        # Frames received but not yet decided: the rest of an incomplete block.
        self._waiting_scores = np.zeros(0, dtype=np.float32)
        self._waiting_levels = np.zeros(0, dtype=np.float32)
        # Ring buffer of recent frame levels for the noise floor.
        self._history = np.empty(int(NOISE_FLOOR_WINDOW_S * 1000 / frame_ms), dtype=np.float32)
        self._history_size = 0
        self._history_next = 0
        # Open span: first frame, last speech frame, and per-frame data kept
        # for the best-pause search.
        self._open_start: int | None = None
        # True when the open span continues a span that was cut at max length.
        self._open_joined = False
        self._last_speech = -1
        self._open_levels: list[float] = []
        self._open_speech: list[bool] = []
        self._open_confirmed: list[bool] = []
        # Closed spans in frames, waiting for padding: (start, end, joined_before).
        self._closed: list[tuple[int, int, bool]] = []
        # End (in samples, padding included) of the last emitted span.
        self._emitted_end = 0
        self._last_core_end = 0

    # -- frame decisions -------------------------------------------------

    def _noise_floor(self, levels: np.ndarray) -> float:
        """Add a block of levels to the history; return its NOISE_FLOOR_PERCENTILE-th percentile.

        The percentile uses numpy's default linear interpolation, computed
        with a partial sort because this runs for every block of frames.
        """
        history = self._history
        capacity = history.size
        recent = levels[-capacity:].astype(np.float32)
        positions = (self._history_next + np.arange(recent.size)) % capacity
        history[positions] = recent
        self._history_next = int((self._history_next + recent.size) % capacity)
        self._history_size = min(capacity, self._history_size + recent.size)
        values = history[: self._history_size]
        rank = (values.size - 1) * NOISE_FLOOR_PERCENTILE / 100
        low = int(np.floor(rank))
        high = min(low + 1, values.size - 1)
        ordered = np.partition(values, (low, high))
        below, above = float(ordered[low]), float(ordered[high])
        fraction = rank - low
        if fraction >= 0.5:
            return above - (above - below) * (1 - fraction)
        return below + (above - below) * fraction

    def decide(self, scores: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """Apply hysteresis and the energy gate to whole decision blocks of frames (the last may be partial)."""
        config = self.config
        # Compared in double precision, as Python floats are.
        scores = scores.astype(np.float64)
        speech = scores >= config.speech_threshold
        silence = scores < config.release_threshold
        if config.energy_gate_db > 0:
            # One noise floor per block, from the history up to the block's end.
            block = self.block_frames
            floors = np.array([self._noise_floor(levels[start : start + block]) for start in range(0, levels.size, block)])
            gate = np.repeat(floors, block)[: levels.size] + config.energy_gate_db
            gated = (levels < gate) & (scores < config.gate_bypass_score)
            speech &= ~gated
            silence |= gated
        # A frame between the two thresholds keeps the state of the frame
        # before it (release_threshold <= speech_threshold always holds).
        indices = np.arange(scores.shape[0])
        settled = np.maximum.accumulate(np.where(speech | silence, indices, -1))
        decisions = np.where(settled >= 0, speech[np.maximum(settled, 0)], self._in_speech)
        if decisions.size:
            self._in_speech = bool(decisions[-1])
        return decisions

    # -- span state machine ----------------------------------------------

    def push(self, scores: np.ndarray, levels: np.ndarray) -> list[Span]:
        """Add the scores and levels of the next frames; return the spans that became final."""
        if self._waiting_scores.size:
            scores = np.concatenate((self._waiting_scores, scores))
            levels = np.concatenate((self._waiting_levels, levels))
        ready = scores.shape[0] - scores.shape[0] % self.block_frames
        self._waiting_scores = scores[ready:]
        self._waiting_levels = levels[ready:]
        if ready:
            self._step_block(scores[:ready], levels[:ready])
        return self._merge(self._release(final=False), final=False)

    def _step_block(self, scores: np.ndarray, levels: np.ndarray) -> None:
        """Decide whole blocks of frames (the last may be partial) and feed them to the state machine."""
        decisions = self.decide(scores, levels)
        confirmed = (decisions & (scores >= self.config.confirm_score)).tolist()
        for is_speech, level, is_confirmed in zip(decisions.tolist(), levels.tolist(), confirmed):
            self._step(is_speech, level, is_confirmed)

    def finish(self) -> list[Span]:
        if self._waiting_scores.size:
            self._step_block(self._waiting_scores, self._waiting_levels)
            self._waiting_scores = self._waiting_scores[:0]
            self._waiting_levels = self._waiting_levels[:0]
        if self._open_start is not None:
            self._close(self._last_speech + 1)
        return self._merge(self._release(final=True), final=True)

    def _merge(self, spans: list[Span], final: bool) -> list[Span]:
        """Join short neighbours up to the merge target; return the spans that are final."""
        if self.merge_target_samples <= 0:
            return spans
        merged = []
        for span in spans:
            pending = self._merging
            if (
                pending is not None
                and span.end - pending.start <= self.merge_target_samples
                and span.start - pending.end <= self.merge_gap_samples
            ):
                self._merging = Span(pending.start, span.end)
                continue
            if pending is not None:
                merged.append(pending)
            self._merging = span
        pending = self._merging
        if pending is not None:
            # No later span can join once the pending one is full, or once the
            # earliest start a later span can have is too far away.
            if self._closed:
                next_start = self._closed[0][0]
            elif self._open_start is not None:
                next_start = self._open_start
            else:
                next_start = self.num_frames
            earliest_next = next_start * self.frame_samples - self.pad_start_samples
            full = pending.end - pending.start >= self.merge_target_samples
            if final or full or earliest_next - pending.end > self.merge_gap_samples:
                merged.append(pending)
                self._merging = None
        return merged

    def _step(self, is_speech: bool, level: float, is_confirmed: bool) -> None:
        frame = self.num_frames
        self.num_frames += 1
        if self._open_start is None:
            if is_speech:
                self._open_start = frame
                self._last_speech = frame
                self._open_levels = [level]
                self._open_speech = [True]
                self._open_confirmed = [is_confirmed]
            return
        self._open_levels.append(level)
        self._open_speech.append(is_speech)
        self._open_confirmed.append(is_confirmed)
        if is_speech:
            self._last_speech = frame
        if frame - self._last_speech >= self.min_silence_frames:
            self._close(self._last_speech + 1)
        elif frame + 1 - self._open_start > self.max_core_frames:
            self._split()

    def _is_confirmed(self, num_frames: int) -> bool:
        """Return whether the first `num_frames` of the open span hold enough confirming frames."""
        return sum(self._open_confirmed[:num_frames]) >= self.min_confirm_frames

    def _close(self, end: int) -> None:
        start = self._open_start
        # A piece that continues a cut span was confirmed with its first piece.
        keep = self._open_joined or (end - start >= self.min_speech_frames and self._is_confirmed(end - start))
        if keep:
            self._closed.append((start, end, self._open_joined))
        self._open_start = None
        self._open_joined = False
        self._open_levels = []
        self._open_speech = []
        self._open_confirmed = []

    def _split(self) -> None:
        """Cut the open span at the quietest frame of its second half."""
        start = self._open_start
        levels = np.asarray(self._open_levels, dtype=np.float32)
        speech = np.asarray(self._open_speech, dtype=bool)
        half = len(levels) // 2
        # Prefer frames the detector called non-speech; among them, the quietest.
        candidates = levels[half:] + np.where(speech[half:], 200.0, 0.0)
        cut = start + half + int(np.argmin(candidates))
        if self._last_speech < cut:
            self._close(self._last_speech + 1)
            return
        # An unconfirmed first piece is dropped and the rest starts afresh.
        keep = self._open_joined or self._is_confirmed(cut - start)
        if keep:
            self._closed.append((start, cut, self._open_joined))
        self._open_start = cut
        self._open_joined = keep
        self._open_levels = self._open_levels[cut - start :]
        self._open_speech = self._open_speech[cut - start :]
        self._open_confirmed = self._open_confirmed[cut - start :]

    # -- padding ------------------------------------------------------------

    def _share_gap(self, gap: int) -> tuple[int, int]:
        """Return (padding after the earlier span, padding before the later one) for a gap in samples."""
        pad_end, pad_start = self.pad_end_samples, self.pad_start_samples
        total = pad_end + pad_start
        if total <= gap:
            return pad_end, pad_start
        # Both sides round down, so the two paddings never overlap.
        return gap * pad_end // total, gap * pad_start // total

    def _release(self, final: bool) -> list[Span]:
        """Pad and return closed spans whose right neighbour is known."""
        frame_samples = self.frame_samples
        released = []
        while self._closed:
            start, end, joined_before = self._closed[0]
            end_sample = end * frame_samples
            if len(self._closed) > 1:
                next_start, _next_end, next_joined = self._closed[1]
                gap = next_start * frame_samples - end_sample
                pad_after = 0 if next_joined else self._share_gap(gap)[0]
            elif self._open_start is not None:
                gap = self._open_start * frame_samples - end_sample
                pad_after = 0 if self._open_joined else self._share_gap(gap)[0]
            elif final:
                pad_after = min(self.pad_end_samples, max(0, self.num_frames * frame_samples - end_sample))
            elif (self.num_frames * frame_samples - end_sample) >= self.pad_end_samples + self.pad_start_samples:
                # A span that opens from now on cannot claim any of this gap.
                pad_after = self.pad_end_samples
            else:
                break
            start_sample = start * frame_samples
            if joined_before:
                padded_start = start_sample
            else:
                if self._emitted_end:
                    pad_before = self._share_gap(start_sample - self._last_core_end)[1]
                else:
                    pad_before = min(self.pad_start_samples, start_sample)
                padded_start = max(self._emitted_end, start_sample - pad_before)
            span = Span(padded_start, end_sample + pad_after)
            released.append(span)
            self._emitted_end = span.end
            self._last_core_end = end_sample
            self._closed.pop(0)
        return released

    @property
    def retain_from(self) -> int:
        """Return the first output sample that a span not yet released may include."""
        frame_samples = self.frame_samples
        if self._closed:
            first = self._closed[0][0] * frame_samples
        elif self._open_start is not None:
            first = self._open_start * frame_samples
        else:
            first = self.num_frames * frame_samples
        retain = max(self._emitted_end, first - self.pad_start_samples)
        if self._merging is not None:
            retain = min(retain, self._merging.start)
        return retain
