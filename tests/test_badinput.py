"""Broken and unusual inputs, run end to end through import_audio and prepare_audio.

The input files come from the bad-input folder named by
AUDIOPREP_TEST_BADINPUT (tests skip when it is unset). They are copied
into tmp_path at test time. `check_baseline` asserts the rules every run
must keep: terminal states, short categorised reasons, no segments for
files that did not end done, complete 16 kHz mono 16-bit WAVs, a manifest
that lists exactly the segment files on disk, and run counts that add up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import tomllib
import wave
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from audioprep.models import AudioFile, FileResult, PrepRun, Segment
from audioprep.pipeline.audio_io import decode_to_pcm
from audioprep.runs import EXIT_FILES_FAILED, EXIT_NOT_STARTED
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.badinput]

REASON_PATTERN = re.compile(r"^[a-z_]+: \S.*$")
TERMINAL = {"done", "no_speech", "failed", "skipped"}
SUBPROCESS_TIMEOUT = 180


# -- helpers shared with test_failures --------------------------------------------


def copy_inputs(badinput_dir: Path, tmp_path: Path, case: str, names: list[str] | None = None) -> Path:
    """Copy one case's input files (or only `names`) into tmp_path/inputs/<case>."""
    source = badinput_dir / case
    target = tmp_path / "inputs" / case
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if names is not None and str(relative) not in names:
            continue
        if path.is_file():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / relative)
    return target


def import_audio(*paths) -> str:
    out = StringIO()
    call_command("import_audio", *[str(path) for path in paths], stdout=out, stderr=StringIO())
    return out.getvalue()


def prepare(*args: str, **options) -> str:
    out = StringIO()
    call_command("prepare_audio", *args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def row(path: Path) -> AudioFile:
    return AudioFile.objects.get(path=str(path))


def read_manifest(output_dir: Path) -> list[dict]:
    with open(output_dir / "manifest.jsonl", encoding="utf-8") as stream:
        return [json.loads(line) for line in stream]


def segment_files(output_dir: Path) -> list[Path]:
    folder = output_dir / "segments"
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else []


def files_of(output_dir: Path, audio_file_id: int) -> list[Path]:
    return [path for path in segment_files(output_dir) if path.name.lstrip(".").startswith(f"{audio_file_id:08d}-")]


def check_wav(path: Path) -> int:
    """Assert `path` is a complete 16 kHz mono 16-bit PCM WAV; return its frame count."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF", path
    assert data[8:12] == b"WAVE", path
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8, f"{path}: RIFF size does not match the file size"
    offset = 12
    fmt = None
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        body = data[offset + 8 : offset + 8 + size]
        if chunk_id == b"fmt ":
            fmt = struct.unpack("<HHIIHH", body[:16])
        elif chunk_id == b"data":
            assert fmt is not None, f"{path}: data before fmt"
            assert fmt[0] == 1, f"{path}: format tag {fmt[0]}, expected 1 (PCM)"
            assert fmt[1] == 1, f"{path}: {fmt[1]} channels, expected 1"
            assert fmt[2] == 16000, f"{path}: sample rate {fmt[2]}, expected 16000"
            assert fmt[5] == 16, f"{path}: {fmt[5]} bits per sample, expected 16"
            assert offset + 8 + size == len(data), f"{path}: data size {size} does not match the bytes present"
            assert size % 2 == 0, path
            return size // 2
        offset += 8 + size + size % 2
    raise AssertionError(f"{path}: no data chunk")


def check_baseline(output_dir: Path, rows=None) -> None:
    """Assert the rules every finished run keeps, over `rows` (default: all)."""
    rows = list(rows if rows is not None else AudioFile.objects.all())
    for audio_file in rows:
        assert audio_file.status in TERMINAL, f"{audio_file.path}: {audio_file.status}"
        if audio_file.status in ("failed", "skipped"):
            assert REASON_PATTERN.match(audio_file.reason), f"{audio_file.path}: reason {audio_file.reason!r}"
            assert len(audio_file.reason) <= 300
            assert "\n" not in audio_file.reason
            assert "Traceback" not in audio_file.reason
        if audio_file.status != "done":
            assert files_of(output_dir, audio_file.pk) == [], f"{audio_file.path} ({audio_file.status}) has segment files"
            assert audio_file.num_segments == 0
        else:
            assert audio_file.num_segments >= 1
            assert Segment.objects.filter(audio_file=audio_file).count() == audio_file.num_segments
    on_disk = segment_files(output_dir)
    assert not [path for path in on_disk if path.name.startswith(".")], "temporary files left in the output tree"
    assert not list(output_dir.glob(".*.tmp"))
    frames = {str(path): check_wav(path) for path in on_disk}
    entries = read_manifest(output_dir) if (output_dir / "manifest.jsonl").exists() else []
    listed = [entry["audio_filepath"] for entry in entries]
    assert len(listed) == len(set(listed)), "manifest lists a segment twice"
    assert set(listed) == set(frames), "manifest and segment files on disk differ"
    for entry in entries:
        assert abs(entry["duration"] - frames[entry["audio_filepath"]] / 16000) <= 0.001, entry
    assert set(Segment.objects.values_list("path", flat=True)) == set(frames)
    for run in PrepRun.objects.exclude(status="running"):
        total = run.num_done + run.num_no_speech + run.num_failed + run.num_skipped + run.num_released
        assert run.num_selected == total, f"run {run.pk}: counts do not add up"
        assert run.finished_at is not None and run.started_at is not None
        assert FileResult.objects.filter(run=run).exclude(status="pending").count() == total - run.num_released


def check_rerun_changes_nothing(output_dir: Path) -> None:
    """B8: a second run over the same rows writes nothing new."""
    before = {str(path): path.read_bytes() for path in segment_files(output_dir)}
    manifest_before = (output_dir / "manifest.jsonl").read_bytes()
    segments_before = list(Segment.objects.values_list("id", "path"))

    prepare("--num_workers", "2")

    assert {str(path): path.read_bytes() for path in segment_files(output_dir)} == before
    assert (output_dir / "manifest.jsonl").read_bytes() == manifest_before
    assert list(Segment.objects.values_list("id", "path")) == segments_before


def segment_bounds(audio_file: AudioFile) -> list[tuple[float, float]]:
    return list(Segment.objects.filter(audio_file=audio_file).order_by("index").values_list("start", "end"))


# -- decoder environment ------------------------------------------------------------


def _unimportable(tmp_path: Path, module: str) -> Path:
    """Return a folder that, first on PYTHONPATH, makes `import <module>` raise ImportError."""
    folder = tmp_path / f"no-{module}"
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(f"raise ImportError('{module} is disabled for this test')\n")
    return folder


@pytest.mark.parametrize(
    ("module", "component", "fix"),
    [("av", "'av' package (PyAV)", "pip install av"), ("webrtcvad", "webrtcvad", "pip install webrtcvad-wheels")],
)
def test_component_missing_not_started(module, component, fix, badinput_dir, tmp_path, run_manage):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(3):
        shutil.copyfile(badinput_dir / "BI-01" / "speech_ok.wav", inputs / f"copy{i}.wav")
    import_audio(inputs)
    env = {"PYTHONPATH": str(_unimportable(tmp_path, module))}

    started = time.monotonic()
    completed = run_manage("prepare_audio", "--num_workers", "2", env=env, timeout=60)
    elapsed = time.monotonic() - started
    check = run_manage("check", env=env, timeout=60)

    assert completed.returncode == EXIT_NOT_STARTED, completed.stderr
    assert "could not start" in completed.stderr
    assert component in completed.stderr
    assert fix in completed.stderr
    assert set(AudioFile.objects.values_list("status", "attempts")) == {("pending", 0)}
    assert not PrepRun.objects.exclude(status="aborted").exists()
    assert check.returncode != 0
    assert "audioprep.E00" in check.stderr
    assert fix in check.stderr
    print(f"prepare_audio with {module} unimportable exited after {elapsed:.2f} s")


def test_no_external_programs_needed(badinput_dir, tmp_path, run_manage):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-01")
    import_audio(inputs)
    # Only the interpreter's folder: no ffmpeg or ffprobe can be found.
    env = {"PATH": str(Path(sys.executable).parent)}

    completed = run_manage("prepare_audio", "--num_workers", "2", env=env)

    assert completed.returncode == 0, completed.stderr
    audio_file = AudioFile.objects.get()
    assert audio_file.status == "done"
    assert audio_file.num_segments == 2


def test_audioop_replacement_declared_for_python_313():
    with open(REPO_ROOT / "pyproject.toml", "rb") as stream:
        dependencies = tomllib.load(stream)["project"]["dependencies"]

    declared = [item for item in dependencies if item.startswith("audioop-lts")]

    assert declared, "audioop-lts must be a dependency for Python 3.13 and later"
    assert "python_version >= '3.13'" in declared[0]


# -- decoding ---------------------------------------------------------------------------


def test_lying_extensions_decoded_from_content(badinput_dir, tmp_path, output_dir):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-02")
    import_audio(inputs)

    prepare("--num_workers", "2")

    same_audio = [inputs / "mp3_bytes_named.wav", inputs / "id3_cover_art.mp3", inputs / "aac_in_mp4.m4a"]
    bounds = []
    for path in same_audio:
        audio_file = row(path)
        assert audio_file.status == "done", f"{path.name}: {audio_file.reason}"
        assert audio_file.num_segments == 2, path.name
        assert audio_file.container and audio_file.codec, path.name
        bounds.append(segment_bounds(audio_file))
    for other in bounds[1:]:
        for (start_a, end_a), (start_b, end_b) in zip(bounds[0], other):
            assert abs(start_a - start_b) <= 0.06
            assert abs(end_a - end_b) <= 0.06
    assert row(inputs / "mp3_bytes_named.wav").codec.startswith("mp3")
    assert row(inputs / "id3_cover_art.mp3").codec.startswith("mp3")
    assert row(inputs / "aac_in_mp4.m4a").codec == "aac"
    truncated = row(inputs / "truncated_no_moov.m4a")
    assert truncated.status == "failed"
    assert truncated.reason.startswith("decode: ")
    assert "moov atom not found" in truncated.reason
    assert "ffmpeg version" not in truncated.reason
    check_baseline(output_dir)
    check_rerun_changes_nothing(output_dir)


def _read_wav_reference(path: Path) -> tuple[np.ndarray, int]:
    """Parse an integer or float PCM WAV with numpy; return mono float samples and the rate."""
    data = path.read_bytes()
    offset = 12
    fmt = None
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        body = data[offset + 8 : offset + 8 + size]
        if chunk_id == b"fmt ":
            tag, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE:
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            break
        offset += 8 + size + size % 2
    tag, channels, rate, bits = fmt
    width = bits // 8
    usable = len(body) - len(body) % (width * channels)
    raw = body[:usable]
    if tag == 3:
        values = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float64)
    elif bits == 24:
        bytes3 = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = bytes3[:, 0] | (bytes3[:, 1] << 8) | (bytes3[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        values = ints / float(1 << 23)
    else:
        values = np.frombuffer(raw, dtype=f"<i{width}").astype(np.float64) / float(1 << (bits - 1))
    return values.reshape(-1, channels).mean(axis=1), rate


def _lowpass_decimate(samples: np.ndarray, factor: int) -> np.ndarray:
    taps = np.arange(-128, 129)
    cutoff = 0.45 / factor
    kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.hamming(taps.size)
    return np.convolve(samples, kernel / kernel.sum(), mode="same")[::factor]


def _best_correlation(reference: np.ndarray, converted: np.ndarray) -> tuple[float, int]:
    best = (-1.0, 0)
    for shift in range(-5, 6):
        a = reference[max(0, shift) :]
        b = converted[max(0, -shift) :]
        size = min(a.size, b.size)
        value = float(np.corrcoef(a[:size], b[:size])[0, 1])
        best = max(best, (value, shift))
    return best


def test_wide_pcm_formats_converted_correctly(badinput_dir, tmp_path, output_dir):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-03")
    import_audio(inputs)

    prepare("--num_workers", "2")

    for path in sorted(inputs.iterdir()):
        audio_file = row(path)
        assert audio_file.status == "done", f"{path.name}: {audio_file.reason}"
        assert audio_file.num_segments == 1, path.name
        reference, rate = _read_wav_reference(path)
        if rate != 16000:
            reference = _lowpass_decimate(reference, rate // 16000)
        converted, _info = decode_to_pcm(str(path))
        # A 16-bit reference conversion clips over-range float samples too.
        clipped = np.clip(reference, -1.0, 1.0)
        correlation, shift = _best_correlation(clipped, converted.astype(np.float64) / 32768)
        assert correlation >= 0.99, f"{path.name}: correlation {correlation:.3f}"
        if path.name == "float32_fmt3_overrange.wav":
            over = np.flatnonzero(np.abs(reference) > 1.0)
            assert over.size > 0
            for index in over:
                value = int(converted[index - shift]) if 0 <= index - shift < converted.size else 0
                assert abs(value) >= 32000, f"sample {index}: {value}"
                assert np.sign(value) == np.sign(reference[index])
    check_baseline(output_dir)


def test_header_disagreements_handled(badinput_dir, tmp_path, output_dir):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-04")
    import_audio(inputs)

    out = prepare("--num_workers", "2", verbosity=3)

    streamed = row(inputs / "streamed_size_ffffffff.wav")
    assert streamed.status == "done"
    assert streamed.num_segments == 2
    assert abs(streamed.duration - 11.59) <= 0.01
    short = row(inputs / "header_claims_10s_has_2s.wav")
    assert short.status == "done"
    assert abs(short.duration - 2.0) <= 0.05
    assert "header_mismatch" in short.flags
    zeroed = row(inputs / "sizes_zeroed_unfinalized.wav")
    assert zeroed.status in ("done", "no_speech")
    assert abs(zeroed.duration - 3.0) <= 0.05
    for name in ("odd_byte_count_16bit.wav", "stereo_partial_last_frame.wav", "cut_off_mid_frame.mp3"):
        assert row(inputs / name).status == "done", f"{name}: {row(inputs / name).reason}"
    assert row(inputs / "cut_off_mid_frame.mp3").num_segments == 1
    # Documented policy: a damaged compressed file ends done with a decode_warnings flag.
    corrupt = row(inputs / "corrupt_bytes_in_middle.mp3")
    assert corrupt.status == "done"
    assert "decode_warnings" in corrupt.flags
    assert abs(corrupt.duration - 10.08) <= 0.3
    log_text = Path(PrepRun.objects.get().log_path).read_text(encoding="utf-8")
    assert f"file {corrupt.pk} decoded with" in log_text
    assert "audioop" not in log_text
    assert "0 failed" in out
    check_baseline(output_dir)


EXPECTED_EMPTY_REASONS = {
    "zero_bytes.wav": "empty: 0 bytes",
    "header_only_no_samples.wav": "empty: no samples",
    "video_no_audio_track.mp4": "decode: no audio stream",
    "picture_named.mp3": "decode: no audio stream (the file is a PNG image)",
    "csv_text_named.wav": "decode: not an audio file",
    "headerless_s16le_16k_mono.pcm": "decode: headerless PCM not supported",
}


def test_nothing_to_decode_fails_with_reason(badinput_dir, tmp_path, output_dir):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-05")
    call_command("import_audio", str(inputs), "--extension", ".wav", "--extension", ".mp3", "--extension", ".mp4",
                 "--extension", ".pcm", stdout=StringIO())
    speech = tmp_path / "inputs" / "speech_ok.wav"
    shutil.copyfile(badinput_dir / "BI-01" / "speech_ok.wav", speech)
    import_audio(speech)

    prepare("--num_workers", "2")

    for name, reason in EXPECTED_EMPTY_REASONS.items():
        audio_file = row(inputs / name)
        assert audio_file.status == "failed", name
        assert audio_file.reason.startswith(reason), f"{name}: {audio_file.reason}"
    assert row(speech).status == "done"
    assert PrepRun.objects.get().status == "completed_with_errors"
    check_baseline(output_dir)


# -- voice activity detection ------------------------------------------------------------


def test_vad_rates_and_frame_lengths(badinput_dir, tmp_path, output_dir):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-07")
    import_audio(inputs)

    prepare("--num_workers", "2", verbosity=3)

    for path in sorted(inputs.iterdir()):
        audio_file = row(path)
        assert audio_file.status == "done", f"{path.name}: {audio_file.reason}"
        assert audio_file.num_segments == 1, path.name
    log_text = Path(PrepRun.objects.get().log_path).read_text(encoding="utf-8")
    assert "Error while processing frame" not in log_text
    check_baseline(output_dir)


def test_invalid_vad_settings_rejected(badinput_dir, tmp_path, output_dir, settings):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-07", ["rate_8000.wav"])
    import_audio(inputs)

    with pytest.raises(CommandError, match=r"invalid choice: 4 \(choose from 0, 1, 2, 3\)"):
        prepare("--vad_aggressiveness", "4")
    settings.AUDIOPREP = {**settings.AUDIOPREP, "SEGMENTATION": {**settings.AUDIOPREP["SEGMENTATION"], "frame_ms": 25}}
    with pytest.raises(CommandError, match=r"frame_ms must be one of \(10, 20, 30\), got 25"):
        prepare()

    assert AudioFile.objects.get().status == "pending"
    assert not PrepRun.objects.exists()


def test_no_speech_means_no_speech(badinput_dir, tmp_path, output_dir, run_manage):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-08")
    import_audio(inputs)

    prepare("--num_workers", "2")

    speech = row(inputs / "speech_two_phrases.wav")
    assert speech.status == "done"
    assert speech.num_segments == 2
    for name in ("digital_silence_5s.wav", "faint_hiss_5s.wav"):
        quiet = row(inputs / name)
        assert quiet.status == "no_speech", f"{name}: {quiet.status} {quiet.reason}"
        assert quiet.num_segments == 0
    check_baseline(output_dir)

    # Second run: webrtcvad raises on the third frame of the speech file.
    AudioFile.objects.update(status="pending", attempts=0)
    completed = run_manage("prepare_audio", "--num_workers", "2", env={"AUDIOPREP_TEST_HOOK": "vad_error=speech_two"})

    assert completed.returncode == EXIT_FILES_FAILED, completed.stderr
    speech.refresh_from_db()
    assert speech.status == "failed"
    assert speech.reason.startswith("vad: ")
    run = PrepRun.objects.latest("id")
    assert run.num_failed == 1
    assert run.num_no_speech == 2
    check_baseline(output_dir)


# -- paths -----------------------------------------------------------------------------------


def test_unusual_names_found_and_kept(badinput_dir, tmp_path, output_dir):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-16")

    import_audio(inputs)
    prepare("--num_workers", "2")

    names = sorted(os.listdir(inputs))
    assert len(names) == 8
    assert AudioFile.objects.count() == 8
    for name in names:
        audio_file = row(inputs / name)
        assert audio_file.status == "done", f"{name}: {audio_file.reason}"
        assert audio_file.num_segments == 1, name
    with open(output_dir / "manifest.jsonl", encoding="utf-8") as stream:
        sources = {json.loads(line)["source_path"] for line in stream}
    assert sources == {str(inputs / name) for name in names}
    for source in sources:
        assert Path(source).is_file()
    check_baseline(output_dir)


def test_admin_lists_unusual_names(badinput_dir, tmp_path, output_dir, admin_client):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-16")
    import_audio(inputs)

    response = admin_client.get("/admin/audioprep/audiofile/")

    assert response.status_code == 200
    page = response.content.decode("utf-8")
    for name in ("Grüße aus Köln.wav", "録音 テスト 01.wav", "REC0001.WAV"):
        assert name in page


def test_missing_and_irregular_files_fail_cleanly(badinput_dir, tmp_path, output_dir):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-17")
    present = inputs / "present.wav"
    for name in ("gone.wav", "folder.wav"):
        shutil.copyfile(present, inputs / name)
    os.symlink(inputs / "missing-target.wav", inputs / "dangling.wav")
    os.symlink(present, inputs / "alias.wav")
    (inputs / "loop").mkdir()
    os.symlink("..", inputs / "loop" / "self")

    out = import_audio(inputs)
    assert "5 new" in out
    assert sorted(Path(path).name for path in AudioFile.objects.values_list("path", flat=True)) == [
        "alias.wav", "dangling.wav", "folder.wav", "gone.wav", "present.wav",
    ]
    # The rows outlive their files.
    (inputs / "gone.wav").unlink()
    (inputs / "folder.wav").unlink()
    (inputs / "folder.wav").mkdir()

    prepare("--num_workers", "2")

    assert row(inputs / "gone.wav").reason == "io: not found"
    assert row(inputs / "dangling.wav").reason.startswith("io: not found")
    assert row(inputs / "folder.wav").reason.startswith("io: not a regular file")
    for name in ("present.wav", "alias.wav"):
        assert row(inputs / name).status == "done", name
    present_paths = set(Segment.objects.filter(audio_file=row(present)).values_list("path", flat=True))
    alias_paths = set(Segment.objects.filter(audio_file=row(inputs / "alias.wav")).values_list("path", flat=True))
    assert present_paths and alias_paths
    assert not present_paths & alias_paths
    sources = {entry["source_path"] for entry in read_manifest(output_dir)}
    assert sources == {str(present), str(inputs / "alias.wav")}
    check_baseline(output_dir)


def _without_file_override() -> list[str]:
    """Return the command prefix under which this user cannot read a mode 000 file.

    Root reads every file through its CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    capabilities, so setpriv starts the command without them, as the same user.
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("runs as root and needs setpriv to drop the file-override capabilities")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_unreadable_file_fails_with_reason(badinput_dir, tmp_path, output_dir):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    present = inputs / "present.wav"
    locked = inputs / "locked.wav"
    shutil.copyfile(badinput_dir / "BI-17" / "present.wav", present)
    shutil.copyfile(present, locked)
    locked.chmod(0o000)
    import_audio(present, locked)
    prefix = _without_file_override()
    probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(locked)!r}, 'rb')"], capture_output=True, timeout=60)
    if probe.returncode == 0:
        pytest.skip("this user can still read a mode 000 file")

    from tests.conftest import database_url

    try:
        completed = subprocess.run(
            [*prefix, sys.executable, str(REPO_ROOT / "manage.py"), "prepare_audio", "--num_workers", "1"],
            cwd=REPO_ROOT,
            env={**os.environ, "DATABASE_URL": database_url(), "AUDIOPREP_OUTPUT_DIR": str(output_dir)},
            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
        )
    finally:
        locked.chmod(0o644)

    assert completed.returncode == EXIT_FILES_FAILED, completed.stderr
    assert row(locked).status == "failed"
    assert row(locked).reason == "io: permission denied"
    assert row(present).status == "done"
    assert files_of(output_dir, row(locked).pk) == []
    check_baseline(output_dir)


def test_file_deleted_mid_run_fails(badinput_dir, tmp_path, output_dir, run_manage):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    paths = []
    for i in range(5):
        path = inputs / f"take{i}.wav"
        shutil.copyfile(badinput_dir / "BI-17" / "present.wav", path)
        paths.append(path)
    import_audio(inputs)
    victim = paths[-1]

    from tests.conftest import database_url

    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "manage.py"), "prepare_audio", "--num_workers", "1"],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": database_url(), "AUDIOPREP_OUTPUT_DIR": str(output_dir),
             "AUDIOPREP_TEST_HOOK": "sleep=1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not PrepRun.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        victim.unlink()
        _out, err = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    assert process.returncode == EXIT_FILES_FAILED, err
    assert row(victim).status == "failed"
    assert row(victim).reason == "io: not found"
    for path in paths[:-1]:
        assert row(path).status == "done"
    check_baseline(output_dir)


def test_colliding_output_names_kept_apart(badinput_dir, tmp_path, output_dir):
    inputs = copy_inputs(badinput_dir, tmp_path, "BI-18")
    import_audio(inputs)
    assert AudioFile.objects.count() == 6

    prepare("--num_workers", "3")

    files = segment_files(output_dir)
    entries = read_manifest(output_dir)
    assert len(files) == 7
    assert len(entries) == 7
    assert row(inputs / "b" / "interview.wav").num_segments == 2
    lowered = [path.name.lower() for path in files]
    assert len(set(lowered)) == len(lowered), "two names differ only by letter case"
    for path in files:
        assert len(path.name.encode("utf-8")) <= 255
        path.name.encode("utf-8").decode("utf-8")
    by_path = {segment.path: segment.audio_file.path for segment in Segment.objects.select_related("audio_file")}
    for entry in entries:
        assert entry["source_path"] == by_path[entry["audio_filepath"]]
        audio_file = AudioFile.objects.get(pk=entry["source_id"])
        assert Path(entry["audio_filepath"]).name.startswith(f"{audio_file.pk:08d}-")
    check_baseline(output_dir)
    check_rerun_changes_nothing(output_dir)
