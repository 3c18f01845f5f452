"""process_audio_sync end to end on generated audio (no database)."""

from __future__ import annotations

import pickle
import wave
from pathlib import Path

import pytest

from audioprep.demo.synth import speech_signal, write_wav
from audioprep.pipeline import errors
from audioprep.pipeline.config import PrepConfig
from audioprep.pipeline.errors import counted, format_duration
from audioprep.pipeline.process import PrepTask, process_audio_sync, segment_path
from tests.conftest import TWO_REGION_LAYOUT


def run(path: Path, output: Path, audio_file_id: int = 7, **config) -> object:
    return process_audio_sync(PrepTask(audio_file_id, str(path), str(output), PrepConfig(**config)))


def test_process_two_regions_written_as_segments(tmp_path):
    path = write_wav(tmp_path / "talk.wav", speech_signal(TWO_REGION_LAYOUT, seed=1))

    result = run(path, tmp_path / "out")

    assert result.status == "done", result.reason
    assert len(result.segments) == 2
    first, second = result.segments
    assert 0.7 <= first.start <= 1.0
    assert 3.0 <= first.end <= 3.4
    assert 3.7 <= second.start <= 4.0
    assert 7.0 <= second.end <= 7.4
    assert first.end <= second.start
    for record in result.segments:
        with wave.open(record.path) as stream:
            assert (stream.getframerate(), stream.getnchannels(), stream.getsampwidth()) == (16000, 1, 2)
            assert stream.getnframes() == round(record.duration * 16000)
        assert record.peak_dbfs <= 0
        assert record.rms_dbfs < record.peak_dbfs
    assert result.duration == pytest.approx(7.8, abs=1e-3)
    assert len(result.checksum) == 64


def test_process_silence_is_no_speech_without_files(tmp_path):
    path = write_wav(tmp_path / "quiet.wav", speech_signal([("silence", 3.0)]))

    result = run(path, tmp_path / "out")

    assert result.status == "no_speech"
    assert result.segments == []
    assert not list((tmp_path / "out").rglob("*.wav"))


def test_process_rerun_same_bytes_and_stale_segments_removed(tmp_path):
    path = write_wav(tmp_path / "talk.wav", speech_signal(TWO_REGION_LAYOUT, seed=1))
    first = run(path, tmp_path / "out")
    contents = {record.path: Path(record.path).read_bytes() for record in first.segments}
    stale = segment_path(tmp_path / "out", 7, str(path), 9)
    stale.write_bytes(b"left over from an older run")

    second = run(path, tmp_path / "out")

    assert {record.path: Path(record.path).read_bytes() for record in second.segments} == contents
    assert not stale.exists()


def test_process_failed_file_removes_old_segments(tmp_path):
    path = write_wav(tmp_path / "talk.wav", speech_signal(TWO_REGION_LAYOUT, seed=1))
    run(path, tmp_path / "out")
    path.write_bytes(b"now this is not audio")

    result = run(path, tmp_path / "out")

    assert result.status == "failed"
    assert result.reason.startswith("decode: ")
    assert not list((tmp_path / "out").rglob("*.wav"))


def test_process_max_segment_length_respected(tmp_path):
    path = write_wav(tmp_path / "monologue.wav", speech_signal([("silence", 0.5), ("speech", 25.0), ("silence", 0.5)], seed=4))

    result = run(path, tmp_path / "out", max_segment_s=6.0)

    assert result.status == "done"
    assert len(result.segments) >= 4
    assert max(record.duration for record in result.segments) <= 6.0 + 1e-6
    for before, after in zip(result.segments, result.segments[1:]):
        assert before.end <= after.start + 1e-9


def test_segment_names_collision_free_and_bounded(tmp_path):
    long_stem = "会議録音" * 20
    names = {
        segment_path(tmp_path, audio_file_id, source, 0).name
        for audio_file_id, source in [(1, "a/interview.wav"), (2, "b/interview.wav"), (3, "Interview.wav"), (4, f"{long_stem}.wav"), (5, "x" * 243 + ".wav")]
    }

    assert len(names) == 5
    assert len({name.lower() for name in names}) == 5
    assert all(len(name.encode()) <= 255 for name in names)
    assert all("/" not in name and not name.startswith(".") for name in names)


def test_process_result_is_small_and_picklable(tmp_path):
    path = write_wav(tmp_path / "talk.wav", speech_signal(TWO_REGION_LAYOUT, seed=1))

    result = run(path, tmp_path / "out")

    assert len(pickle.dumps(result)) < 64 * 1024


@pytest.mark.parametrize(
    "error_class",
    [errors.PrepError, errors.InputIOError, errors.EmptyInputError, errors.DecodeError, errors.VadError, errors.OutputError, errors.ConfigError, errors.EnvironmentCheckError],
)
def test_pipeline_errors_survive_pickling(error_class):
    error = error_class("detail with ümlaut")

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is error_class
    assert copy.reason() == error.reason()


def test_format_reason_single_line_bounded():
    reason = errors.format_reason("decode", "line one\nline two " + "x" * 500)

    assert "\n" not in reason
    assert len(reason) <= errors.MAX_REASON_CHARS
    assert reason.startswith("decode: line one line two")


def test_process_in_forked_child_after_parent_use(tmp_path):
    import multiprocessing

    path = write_wav(tmp_path / "talk.wav", speech_signal(TWO_REGION_LAYOUT, seed=1))
    assert run(path, tmp_path / "parent").status == "done"
    task = PrepTask(8, str(path), str(tmp_path / "child"), PrepConfig())

    with multiprocessing.get_context("fork").Pool(1) as pool:
        result = pool.apply_async(process_audio_sync, (task,)).get(timeout=60)

    assert result.status == "done"
    assert len(result.segments) == 2


def test_counted_singular_for_one():
    assert counted(1, "segment") == "1 segment"
    assert counted(0, "segment") == "0 segments"
    assert counted(12, "file") == "12 files"


def test_format_duration_picks_unit():
    assert format_duration(42.04) == "42.0 s"
    assert format_duration(750) == "12.5 min"
    assert format_duration(6336) == "1.760 h"
