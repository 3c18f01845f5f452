"""prepare_audio and import_audio through call_command, the CLI and the seed's API."""

from __future__ import annotations

import asyncio
import json
import os
import wave
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from audioprep.models import AudioFile, FileResult, PrepRun, Segment
from audioprep.prepare_audio import PrepareAudio
from audioprep.runs import EXIT_FILES_FAILED, EXIT_NOT_STARTED
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def prepare(*args: str, **options) -> str:
    out = StringIO()
    call_command("prepare_audio", *args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def import_audio(*paths) -> str:
    out = StringIO()
    call_command("import_audio", *[str(path) for path in paths], stdout=out)
    return out.getvalue()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Map every file under `folder` to (size, mtime_ns)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def read_manifest(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line) for line in stream]


@pytest.mark.parametrize("num_workers", [1, 2])
def test_prepare_audio_two_regions_done(num_workers, make_wav, output_dir):
    make_wav("a.wav")
    make_wav("b.wav", seed=3)
    import_audio(make_wav("c.wav", seed=4).parent)

    out = prepare("--num_workers", str(num_workers))

    assert "3 done" in out
    assert set(AudioFile.objects.values_list("status", flat=True)) == {"done"}
    assert Segment.objects.count() == 6
    run = PrepRun.objects.get()
    assert run.status == "completed"
    assert (run.num_selected, run.num_done, run.num_segments) == (3, 3, 6)
    assert run.num_workers == num_workers
    assert FileResult.objects.filter(run=run, status="done").count() == 3


def test_prepare_audio_segments_match_rows_and_manifest(make_wav, output_dir):
    import_audio(make_wav("a.wav"), make_wav("b.wav", sample_rate=44100, channels=2, seed=5))

    prepare("--num-workers", "2")

    manifest = read_manifest(output_dir / "manifest.jsonl")
    segments = list(Segment.objects.order_by("audio_file_id", "index"))
    assert [entry["audio_filepath"] for entry in manifest] == [segment.path for segment in segments]
    for entry, segment in zip(manifest, segments):
        assert entry["source_path"] == segment.audio_file.path
        assert entry["source_id"] == segment.audio_file_id
        assert entry["start"] == segment.start
        assert entry["end"] == segment.end
        with wave.open(segment.path) as stream:
            assert stream.getframerate() == 16000
            assert stream.getnchannels() == 1
            assert stream.getsampwidth() == 2
            assert abs(stream.getnframes() / 16000 - segment.duration) <= 0.001
        assert Path(segment.path).is_relative_to(output_dir)
    assert not list(output_dir.rglob("*.tmp"))


def test_prepare_audio_rerun_changes_nothing(make_wav, output_dir):
    import_audio(make_wav("a.wav"), make_wav("b.wav", seed=2))
    prepare("--num_workers", "2")
    before = snapshot(output_dir / "segments") | {"manifest.jsonl": snapshot(output_dir)["manifest.jsonl"]}
    rows_before = list(Segment.objects.values_list("id", "path", "start", "end"))

    out = prepare("--num_workers", "2")

    after = snapshot(output_dir / "segments") | {"manifest.jsonl": snapshot(output_dir)["manifest.jsonl"]}
    assert "0 files" in out
    assert after == before
    assert list(Segment.objects.values_list("id", "path", "start", "end")) == rows_before
    assert PrepRun.objects.latest("id").num_selected == 0


def test_prepare_audio_failed_file_recorded_and_run_goes_on(make_wav, tmp_path, output_dir):
    broken = tmp_path / "audio" / "broken.wav"
    make_wav("good.wav")
    broken.write_text("id,name\n1,not audio\n")
    import_audio(tmp_path / "audio")

    prepare("--num_workers", "2")

    assert AudioFile.objects.get(path__endswith="good.wav").status == "done"
    failed = AudioFile.objects.get(path__endswith="broken.wav")
    assert failed.status == "failed"
    assert failed.reason.startswith("decode: ")
    assert PrepRun.objects.get().status == "completed_with_errors"
    assert not list((output_dir / "segments").rglob("*broken*"))


def test_prepare_audio_failed_files_exit_status(make_wav, tmp_path, run_manage):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "empty.wav").write_bytes(b"")
    import_audio(tmp_path / "audio")

    completed = run_manage("prepare_audio", "--num_workers", "1")

    assert completed.returncode == EXIT_FILES_FAILED, completed.stderr
    assert "1 file of 1 failed" in completed.stderr
    assert AudioFile.objects.get().reason == "empty: 0 bytes"


def test_prepare_audio_unwritable_output_not_started(make_wav, tmp_path, run_manage):
    import_audio(make_wav("a.wav"))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")

    completed = run_manage("prepare_audio", "--output_dir", str(blocker / "out"))

    assert completed.returncode == EXIT_NOT_STARTED
    assert "could not start" in completed.stderr
    assert AudioFile.objects.get().status == "pending"


def test_prepare_audio_invalid_option_rejected(make_wav):
    import_audio(make_wav("a.wav"))

    with pytest.raises(CommandError, match="min_silence_ms must be at least frame_ms"):
        prepare("--min_silence_ms", "10")
    assert AudioFile.objects.get().status == "pending"
    assert not PrepRun.objects.exists()


def test_prepare_audio_dry_run_changes_nothing(make_wav, output_dir):
    import_audio(make_wav("a.wav"), make_wav("b.wav", seed=2))

    out = prepare("--dry-run", "--limit", "1")

    assert "would prepare 1 of 2 pending files" in out
    assert set(AudioFile.objects.values_list("status", flat=True)) == {"pending"}
    assert not PrepRun.objects.exists()


def test_prepare_audio_limit_and_retry_failed(make_wav, tmp_path, output_dir):
    make_wav("a.wav")
    make_wav("b.wav", seed=2)
    missing = tmp_path / "audio" / "c.wav"
    make_wav("c.wav", seed=3)
    import_audio(tmp_path / "audio")
    missing.rename(tmp_path / "moved.wav")

    prepare("--limit", "1")
    assert AudioFile.objects.filter(status="pending").count() == 2
    prepare()
    assert AudioFile.objects.get(path=str(missing)).reason == "io: not found"

    (tmp_path / "moved.wav").rename(missing)
    prepare("--retry_failed")

    assert set(AudioFile.objects.values_list("status", flat=True)) == {"done"}


def test_prepare_audio_log_file_has_each_file_once(make_wav, output_dir):
    import_audio(*(make_wav(f"{i}.wav", seed=i) for i in range(4)))

    prepare("--num_workers", "2", verbosity=3)

    run = PrepRun.objects.get()
    text = Path(run.log_path).read_text(encoding="utf-8")
    for audio_file in AudioFile.objects.all():
        assert text.count(f"file {audio_file.pk} done:") == 1
    # Worker processes log at DEBUG with verbosity 3; their lines reach the run log.
    assert "decoded: wav pcm_s16le" in text
    assert f"run={run.pk}" in text


def test_seed_usage_example_records_run(make_wav, output_dir):
    from prepare_audio import PrepareAudio as ShortImport

    import_audio(make_wav("a.wav"))
    assert ShortImport is PrepareAudio
    audio_preparer = ShortImport()

    async def run_audio_preparation():
        await audio_preparer.fetch(model_for_vad=Path("webrtc"), output_dir=output_dir, num_workers=2)

    asyncio.run(run_audio_preparation())

    run = PrepRun.objects.get()
    assert run.status == "completed"
    assert run.num_done == 1
    assert audio_preparer.summary.run_id == run.pk


def test_import_audio_counts_and_case_insensitive(tmp_path, make_wav):
    make_wav("one.wav")
    make_wav("sub/TWO.WAV", seed=2)
    (tmp_path / "audio" / "notes.txt").write_text("not audio")
    os.symlink(tmp_path / "audio", tmp_path / "audio" / "sub" / "loop")

    first = import_audio(tmp_path / "audio")
    second = import_audio(tmp_path / "audio")

    assert "2 new, 0 already known, 1 ignored" in first
    assert "0 new, 2 already known" in second
    assert AudioFile.objects.count() == 2


def test_import_audio_list_file_and_glob(tmp_path, make_wav):
    first = make_wav("one.wav")
    make_wav("two.flac.wav", seed=2)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{first}\n\n# comment\n", encoding="utf-8")
    out = StringIO()

    call_command("import_audio", "--from-file", str(listing), str(tmp_path / "audio" / "*.flac.wav"), stdout=out)

    assert "2 new" in out.getvalue()


@pytest.mark.parametrize("entry", ["manage.py", "fire"])
def test_import_missing_path_exits_1(entry, make_wav, run_manage, tmp_path):
    present = make_wav("one.wav")
    missing = tmp_path / "no-such-folder"
    if entry == "manage.py":
        completed = run_manage("import_audio", str(present), str(missing))
    else:
        import subprocess
        import sys

        from tests.conftest import database_url

        completed = subprocess.run(
            [sys.executable, "-m", "audioprep", "import_audio", str(present), str(missing)],
            cwd=REPO_ROOT, env={**os.environ, "DATABASE_URL": database_url()}, capture_output=True, text=True, timeout=120,
        )

    assert completed.returncode == 1, completed.stderr
    assert f"not found: {missing}" in completed.stderr
    assert "1 new" in completed.stdout
    assert AudioFile.objects.filter(path=str(present)).exists()


def test_fire_cli_runs_same_prepare(make_wav, run_manage, output_dir):
    import_audio(make_wav("a.wav"))
    import subprocess
    import sys

    from tests.conftest import database_url

    completed = subprocess.run(
        [sys.executable, "-m", "audioprep", "prepare_audio", "--num_workers", "2"],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": database_url(), "AUDIOPREP_OUTPUT_DIR": str(output_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    assert "1 done" in completed.stdout
    assert PrepRun.objects.get().status == "completed"
    assert AudioFile.objects.get().status == "done"


def run_fire(*args: str, output_dir: Path):
    import subprocess
    import sys

    from tests.conftest import database_url

    return subprocess.run(
        [sys.executable, "-m", "audioprep", "prepare_audio", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": database_url(), "AUDIOPREP_OUTPUT_DIR": str(output_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("args", [("--pad_msec", "50"), ("--num_workers", "four"), ("--limit", "abc"), ("--num_workers", "0")])
def test_fire_cli_bad_option_changes_nothing(make_wav, output_dir, args):
    import_audio(make_wav("a.wav"))

    completed = run_fire(*args, output_dir=output_dir)

    assert completed.returncode == EXIT_NOT_STARTED, completed.stderr
    assert "error" in completed.stderr
    assert AudioFile.objects.get().status == "pending"
    assert not PrepRun.objects.exists()


def test_prepare_audio_zero_workers_rejected(make_wav):
    import_audio(make_wav("a.wav"))

    with pytest.raises(CommandError, match="--num_workers must be at least 1, got 0"):
        prepare("--num_workers", "0")


def test_dry_run_counts_failed_with_retry(make_wav, tmp_path, output_dir):
    (tmp_path / "audio").mkdir(parents=True, exist_ok=True)
    (tmp_path / "audio" / "empty.wav").write_bytes(b"")
    make_wav("good.wav")
    import_audio(tmp_path / "audio")
    prepare()

    out = prepare("--dry-run", "--retry_failed")

    assert "would prepare 1 of 1 pending or failed file with" in out
    assert AudioFile.objects.get(path__endswith="empty.wav").status == "failed"


def test_dry_run_rejects_unusable_model(make_wav, tmp_path):
    import_audio(make_wav("a.wav"))
    model = tmp_path / "not_a_model.onnx"
    model.write_text("not a model")

    with pytest.raises(CommandError, match="could not start"):
        prepare("--dry-run", "--model_for_vad", str(model))
