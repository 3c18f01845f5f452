"""Batches of short files in one worker call: same outputs as one file at a time."""

from __future__ import annotations

from pathlib import Path

from audioprep.pipeline import process
from audioprep.pipeline.config import PrepConfig
from audioprep.pipeline.errors import OutputError
from audioprep.pipeline.process import PrepTask, process_audio_sync, process_batch_sync


def _tasks(paths: list[Path], output_dir: Path) -> list[PrepTask]:
    return [PrepTask(index + 1, str(path), str(output_dir), PrepConfig(), fresh=True) for index, path in enumerate(paths)]


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _spans(result) -> list[tuple[float, float, str]]:
    return [(segment.start, segment.end, Path(segment.path).name) for segment in result.segments]


def test_batch_matches_single_files(make_wav, tmp_path):
    paths = [make_wav(f"clip{index}.wav", seed=index) for index in range(4)]

    single = [process_audio_sync(task) for task in _tasks(paths, tmp_path / "single")]
    batch = process_batch_sync(_tasks(paths, tmp_path / "batch"))

    assert [result.status for result in batch] == ["done"] * 4
    for single_result, batch_result in zip(single, batch):
        assert _spans(batch_result) == _spans(single_result)
    assert _files(tmp_path / "batch") == _files(tmp_path / "single")


def test_batch_output_error_fails_one_file(make_wav, tmp_path, monkeypatch):
    paths = [make_wav(f"clip{index}.wav", seed=index) for index in range(3)]
    original = process.finalize_file

    def failing_finalize(temporary: Path, path: Path) -> None:
        if path.name.startswith("00000002-"):
            temporary.unlink()
            raise OutputError(f"no space left on device writing {path}")
        original(temporary, path)

    monkeypatch.setattr(process, "finalize_file", failing_finalize)
    results = process_batch_sync(_tasks(paths, tmp_path / "out"))

    assert [result.status for result in results] == ["done", "failed", "done"]
    assert results[1].reason.startswith("output: no space left on device")
    assert results[1].segments == []
    names = [path.name for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert names
    assert not [name for name in names if name.startswith("00000002-") or name.startswith(".")]
