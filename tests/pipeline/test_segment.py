"""Segmentation policy on hand-made frame scores, and the default policy on real recordings."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from audioprep.pipeline.config import BACKEND_DEFAULTS, OUTPUT_SAMPLE_RATE, PrepConfig
from audioprep.pipeline.process import PrepTask, process_audio_sync
from audioprep.pipeline.segment import Segmenter

FRAME_SAMPLES = 480  # 30 ms at 16 kHz
LOUD_DBFS = -20.0
QUIET_DBFS = -60.0
# Files of the corpus that contain no speech at all.
NO_SPEECH_FILES = {"freesound_573577_household_noise_48k.wav", "silence_2s_16k.wav"}


def run_segmenter(config: PrepConfig, scores, levels=None, block: int = 17) -> list[tuple[int, int]]:
    """Feed frame scores in blocks and return the spans in frames (fractional where padding is not whole frames)."""
    scores = np.asarray(scores, dtype=np.float32)
    levels = np.full(scores.shape, LOUD_DBFS, dtype=np.float32) if levels is None else np.asarray(levels, dtype=np.float32)
    segmenter = Segmenter(config)
    spans = []
    for start in range(0, scores.size, block):
        spans += segmenter.push(scores[start : start + block], levels[start : start + block])
        assert all(span.start >= 0 for span in spans)
    spans += segmenter.finish()
    return [(span.start / FRAME_SAMPLES, span.end / FRAME_SAMPLES) for span in spans]


def layout(*parts: tuple[float, int]) -> np.ndarray:
    """Build frame scores from (score, number of frames) pairs."""
    return np.concatenate([np.full(count, score, dtype=np.float32) for score, count in parts])


NO_PAD = PrepConfig(pad_ms=0, energy_gate_db=0.0)


def test_short_burst_dropped():
    # 5 frames (150 ms) is below min_speech_ms 250.
    assert run_segmenter(NO_PAD, layout((0, 20), (1, 5), (0, 40))) == []


def test_long_enough_burst_kept():
    assert run_segmenter(NO_PAD, layout((0, 20), (1, 10), (0, 40))) == [(20, 30)]


def test_short_pause_does_not_split():
    # 10 frames (300 ms) of pause is below min_silence_ms 400.
    assert run_segmenter(NO_PAD, layout((0, 20), (1, 10), (0, 10), (1, 10), (0, 40))) == [(20, 50)]


def test_long_pause_splits():
    assert run_segmenter(NO_PAD, layout((0, 20), (1, 10), (0, 20), (1, 10), (0, 40))) == [(20, 30), (50, 60)]


def test_padding_never_overlaps_neighbour():
    # Gap of 14 frames (420 ms) with 300 ms padding: each side gets half the gap.
    config = PrepConfig(pad_ms=300, energy_gate_db=0.0)
    spans = run_segmenter(config, layout((0, 20), (1, 10), (0, 14), (1, 10), (0, 40)))
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0]
    assert spans[0][1] == pytest.approx(37)
    assert spans[1][0] == pytest.approx(37)
    # 300 ms = 10 frames before the first span and after the last.
    assert spans[0][0] == pytest.approx(10)
    assert spans[1][1] == pytest.approx(64)


def test_padding_clipped_at_file_start():
    config = PrepConfig(pad_ms=300, energy_gate_db=0.0)
    assert run_segmenter(config, layout((0, 3), (1, 10), (0, 40)))[0][0] == 0


def test_asymmetric_padding():
    # 90 ms = 3 frames before, 30 ms = 1 frame after.
    config = PrepConfig(pad_start_ms=90, pad_end_ms=30, energy_gate_db=0.0)
    spans = run_segmenter(config, layout((0, 20), (1, 10), (0, 20), (1, 10), (0, 40)))
    assert spans == [(17, 31), (47, 61)]


def test_short_gap_shared_by_padding_ratio():
    # A 14-frame gap against 10 + 5 frames of padding: the later span gets
    # two thirds of the gap and the earlier one a third.
    config = PrepConfig(pad_start_ms=300, pad_end_ms=150, energy_gate_db=0.0)
    spans = run_segmenter(config, layout((0, 20), (1, 10), (0, 14), (1, 10), (0, 40)))
    assert len(spans) == 2
    assert spans[0][1] == pytest.approx(30 + 14 / 3)
    assert spans[1][0] == pytest.approx(30 + 14 / 3)
    assert spans[0][0] == pytest.approx(10)
    assert spans[1][1] == pytest.approx(59)


def test_block_size_with_asymmetric_padding():
    config = PrepConfig(pad_start_ms=150, pad_end_ms=30, energy_gate_db=0.0)
    rng = np.random.default_rng(1)
    scores = (rng.random(3000) < 0.6).astype(np.float32)
    expected = run_segmenter(config, scores, block=1)
    assert expected
    for block in (7, 16, 500):
        assert run_segmenter(config, scores, block=block) == expected
    for previous, following in zip(expected, expected[1:]):
        assert previous[1] <= following[0]


def test_max_length_with_asymmetric_padding():
    config = PrepConfig(pad_start_ms=400, pad_end_ms=0, max_segment_s=5.0, energy_gate_db=0.0)
    spans = run_segmenter(config, layout((0, 20), (1, 1000), (0, 40)))
    assert len(spans) > 1
    for start, end in spans:
        assert (end - start) * FRAME_SAMPLES / OUTPUT_SAMPLE_RATE <= config.max_segment_s + 1e-9


def test_webrtc_defaults_filled_in():
    config = PrepConfig()
    for name, value in BACKEND_DEFAULTS["webrtc"].items():
        assert getattr(config, name) == value
    assert config.pad_ms == 100


def test_silero_defaults_filled_in(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model")
    config = PrepConfig(vad_model=str(model))
    for name, value in BACKEND_DEFAULTS["silero"].items():
        assert getattr(config, name) == value
    # The sides differ, so no single pad_ms describes them.
    assert config.pad_ms is None
    assert config.as_dict()["pad_start_ms"] == 80


def test_explicit_values_override_backend_defaults(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model")
    config = PrepConfig(vad_model=str(model), energy_gate_db=3.0, min_silence_ms=500, pad_ms=40)
    assert config.energy_gate_db == 3.0
    assert config.min_silence_ms == 500
    assert (config.pad_start_ms, config.pad_end_ms, config.pad_ms) == (40, 40, 40)
    assert PrepConfig(vad_model=str(model), pad_end_ms=20).pad_start_ms == 80


def test_filled_defaults_hash_like_explicit_values():
    explicit = PrepConfig(**BACKEND_DEFAULTS["webrtc"])
    assert explicit.config_hash() == PrepConfig().config_hash()
    rebuilt = PrepConfig.from_dict(PrepConfig().as_dict())
    assert rebuilt == PrepConfig()
    assert rebuilt.config_hash() == PrepConfig().config_hash()


def test_pad_ms_conflicting_with_side_rejected():
    with pytest.raises(ValueError, match="pad_ms 50 conflicts with pad_start_ms 100"):
        PrepConfig(pad_ms=50, pad_start_ms=100)
    with pytest.raises(ValueError, match="pad_ms must be"):
        PrepConfig(pad_ms=-10)
    assert PrepConfig(pad_ms=50, pad_end_ms=50).pad_start_ms == 50


def test_max_length_split_at_quietest_pause():
    config = PrepConfig(pad_ms=100, max_segment_s=10.0, energy_gate_db=0.0)
    # 15 s of speech with a 3-frame quiet dip at frame 250 (7.5 s), which is
    # too short to close the span.
    scores = layout((1, 250), (0, 3), (1, 247), (0, 40))
    levels = np.full(scores.shape, LOUD_DBFS)
    levels[250:253] = QUIET_DBFS
    spans = run_segmenter(config, scores, levels)
    assert len(spans) == 2
    assert spans[0][1] == spans[1][0]
    assert 250 <= spans[0][1] <= 253
    for start, end in spans:
        assert (end - start) * FRAME_SAMPLES / OUTPUT_SAMPLE_RATE <= config.max_segment_s


def test_max_length_respected_without_pause():
    config = PrepConfig(max_segment_s=5.0, energy_gate_db=0.0)
    spans = run_segmenter(config, layout((0, 10), (1, 1000), (0, 40)))
    assert len(spans) > 1
    for start, end in spans:
        assert (end - start) * FRAME_SAMPLES / OUTPUT_SAMPLE_RATE <= config.max_segment_s + 1e-9
    for previous, following in zip(spans, spans[1:]):
        assert previous[1] == following[0]


def test_hysteresis_with_probabilities():
    config = PrepConfig(pad_ms=0, energy_gate_db=0.0, speech_threshold=0.5, release_threshold=0.35)
    # 0.4 alone never starts speech, but continues it after 0.6.
    assert run_segmenter(config, layout((0, 10), (0.4, 20), (0, 40))) == []
    assert run_segmenter(config, layout((0, 10), (0.9, 5), (0.4, 15), (0.3, 20), (0, 40))) == [(10, 30)]


def test_energy_gate_rejects_quiet_weak_frames():
    config = PrepConfig(pad_ms=0, energy_gate_db=6.0)
    # 200 frames of background at -60 dBFS set the noise floor; then weak
    # speech evidence (0.6) only 2 dB above it, then the same loud.
    scores = layout((0, 200), (0.6, 20), (1.0, 4), (0, 40), (0.6, 20), (1.0, 4), (0, 40))
    levels = np.full(scores.shape, QUIET_DBFS)
    levels[200:224] = QUIET_DBFS + 2
    levels[264:288] = LOUD_DBFS
    spans = run_segmenter(config, scores, levels)
    # The quiet weak frames are gated, so only the 4 strong frames remain:
    # too short for min_speech_ms. The loud span is kept whole.
    assert spans == [(264, 288)]


def test_energy_gate_bypassed_by_strong_frames():
    config = PrepConfig(pad_ms=0, energy_gate_db=6.0)
    scores = layout((0, 200), (0.9, 20), (0, 40))
    levels = np.full(scores.shape, QUIET_DBFS)
    levels[200:220] = QUIET_DBFS + 2
    assert run_segmenter(config, scores, levels) == [(200, 220)]


def test_span_without_confirming_frames_dropped():
    config = PrepConfig(pad_ms=0, energy_gate_db=0.0)
    # 0.6 is speech but below confirm_score 0.85; 120 ms = 4 frames needed.
    assert run_segmenter(config, layout((0, 10), (0.6, 30), (0, 40))) == []
    assert run_segmenter(config, layout((0, 10), (0.6, 3), (0.9, 3), (0.6, 24), (0, 40))) == []
    assert run_segmenter(config, layout((0, 10), (0.6, 3), (0.9, 4), (0.6, 23), (0, 40))) == [(10, 40)]


def test_block_size_does_not_change_spans():
    rng = np.random.default_rng(0)
    scores = (rng.random(3000) < 0.6).astype(np.float32)
    expected = run_segmenter(NO_PAD, scores, block=1)
    assert expected
    for block in (7, 16, 500):
        assert run_segmenter(NO_PAD, scores, block=block) == expected


def _manifest_files(corpus_dir: Path) -> list[str]:
    with open(corpus_dir / "MANIFEST.tsv", newline="") as stream:
        return [row["file"] for row in csv.DictReader(stream, delimiter="\t")]


@pytest.mark.corpus
def test_default_policy_on_corpus(corpus_dir, tmp_path):
    config = PrepConfig()
    files = _manifest_files(corpus_dir)
    files += sorted(str(path.relative_to(corpus_dir)) for path in (corpus_dir / "gt").glob("*") if path.suffix in (".wav", ".flac"))
    assert NO_SPEECH_FILES <= set(files)
    counts = {}
    for index, name in enumerate(sorted(set(files))):
        result = process_audio_sync(PrepTask(audio_file_id=index, path=str(corpus_dir / name), output_dir=str(tmp_path), config=config))
        assert result.status in ("done", "no_speech"), f"{name}: {result.reason}"
        counts[name] = len(result.segments)
        for segment in result.segments:
            assert segment.duration <= config.max_segment_s + 1e-6, f"{name}: segment {segment.index} is {segment.duration:.2f} s long"
    assert counts["freesound_573577_household_noise_48k.wav"] == 0
    assert counts["silence_2s_16k.wav"] == 0
    without_segments = sorted(name for name, count in counts.items() if count == 0 and name not in NO_SPEECH_FILES)
    assert without_segments == []


MERGE = PrepConfig(pad_ms=0, energy_gate_db=0.0, merge_target_s=3.0, merge_max_gap_ms=1000)


def test_merge_joins_short_neighbours():
    # Three 0.6 s bursts 0.6 s apart: all fit in 3 s, so they become one segment.
    scores = layout((0, 20), (1, 20), (0, 20), (1, 20), (0, 20), (1, 20), (0, 40))

    assert run_segmenter(MERGE, scores) == [(20, 120)]


def test_merge_stops_at_target_length():
    # Five 0.6 s bursts 0.6 s apart: the first three fill the 3 s target, the other two form a second segment.
    scores = layout((0, 20), *[(1, 20), (0, 20)] * 5, (0, 40))

    assert run_segmenter(MERGE, scores) == [(20, 120), (140, 200)]


def test_merge_skips_long_gaps():
    scores = layout((0, 20), (1, 20), (0, 50), (1, 20), (0, 40))

    assert run_segmenter(MERGE, scores) == [(20, 40), (90, 110)]


def test_merge_off_by_default():
    scores = layout((0, 20), (1, 20), (0, 20), (1, 20), (0, 40))

    assert run_segmenter(NO_PAD, scores) == [(20, 40), (60, 80)]


def test_merge_target_above_max_rejected():
    with pytest.raises(ValueError, match="merge_target_s must be between 0"):
        PrepConfig(max_segment_s=10.0, merge_target_s=12.0)


def test_gated_spans_ignore_block_size():
    # With the energy gate on, the noise floor is updated per decision block
    # counted from the first frame, not per chunk the caller happens to push.
    rng = np.random.default_rng(1)
    lengths = rng.integers(10, 80, 80)
    speech = np.repeat(np.arange(lengths.size) % 2 == 1, lengths)
    # Scores overlap between the two kinds of region, so the gate and the
    # hysteresis both decide some frames.
    scores = np.clip(np.where(speech, 0.7, 0.3) + rng.normal(0, 0.2, speech.size), 0, 1).astype(np.float32)
    levels = (np.where(speech, -30.0, -50.0) + rng.normal(0, 6, speech.size)).astype(np.float32)
    config = PrepConfig()
    expected = run_segmenter(config, scores, levels, block=1)
    assert len(expected) > 10
    for block in (7, 17, 67, 4000):
        assert run_segmenter(config, scores, levels, block=block) == expected


def _whole_file_segments(path: Path, config: PrepConfig) -> list[tuple[float, float]]:
    """Segment a file the non-streaming way: decode it whole, score every frame at once."""
    from audioprep.pipeline.audio_io import decode_to_pcm
    from audioprep.pipeline.segment import frame_levels_dbfs
    from audioprep.pipeline.vad import create_detector

    samples, info = decode_to_pcm(str(path), config.channel)
    usable = samples.size - samples.size % config.frame_samples
    frames = samples[:usable].reshape(-1, config.frame_samples)
    segmenter = Segmenter(config)
    spans = segmenter.push(create_detector(config).score(frames), frame_levels_dbfs(frames))
    spans += segmenter.finish()
    return [(span.start / OUTPUT_SAMPLE_RATE, min(span.end, samples.size) / OUTPUT_SAMPLE_RATE) for span in spans]


@pytest.mark.corpus
def test_streaming_matches_whole_file(corpus_dir, tmp_path):
    config = PrepConfig()
    frame_s = config.frame_ms / 1000
    names = sorted(set(_manifest_files(corpus_dir)))
    compared = 0
    for index, name in enumerate(names):
        result = process_audio_sync(PrepTask(audio_file_id=index, path=str(corpus_dir / name), output_dir=str(tmp_path), config=config))
        assert result.status in ("done", "no_speech"), f"{name}: {result.reason}"
        streamed = [(segment.start, segment.end) for segment in result.segments]
        whole = _whole_file_segments(corpus_dir / name, config)
        assert len(streamed) == len(whole), f"{name}: {len(streamed)} segments streamed, {len(whole)} from the whole file"
        for (start, end), (whole_start, whole_end) in zip(streamed, whole):
            assert abs(start - whole_start) <= frame_s, f"{name}: segment starts {start} and {whole_start}"
            assert abs(end - whole_end) <= frame_s, f"{name}: segment ends {end} and {whole_end}"
        compared += len(streamed)
    assert compared > 100
