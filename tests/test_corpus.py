"""The main job on real recordings: import and prepare a whole corpus folder.

The folder is named by AUDIOPREP_TEST_CORPUS and must hold MANIFEST.tsv;
the test is skipped, with the reason shown, when the variable is unset.
"""

from __future__ import annotations

import csv
import json
import wave
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from audioprep.models import AudioFile, PrepRun, Segment
from audioprep.pipeline.audio_io import decode_to_pcm

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.corpus]

NO_SPEECH_FILES = {"freesound_573577_household_noise_48k.wav", "silence_2s_16k.wav"}
MAX_SEGMENT_S = 20.0


def manifest_files(corpus: Path) -> list[str]:
    with open(corpus / "MANIFEST.tsv", encoding="utf-8", newline="") as stream:
        return [row["file"] for row in csv.DictReader(stream, delimiter="\t")]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*") if path.is_file()}


@pytest.fixture
def prepared_corpus(corpus_dir, output_dir):
    call_command("import_audio", str(corpus_dir), stdout=StringIO())
    out = StringIO()
    call_command("prepare_audio", "--num_workers", "4", "--max_segment_s", str(MAX_SEGMENT_S), stdout=out, stderr=StringIO())
    return corpus_dir, output_dir, out.getvalue()


def test_corpus_every_file_terminal_as_expected(prepared_corpus):
    corpus, _output, out = prepared_corpus
    expected = manifest_files(corpus) + [f"gt/{path.name}" for path in sorted((corpus / "gt").glob("*")) if path.suffix != ".json"]
    by_path = {Path(row.path).relative_to(corpus).as_posix(): row for row in AudioFile.objects.all()}

    assert set(expected) <= set(by_path), f"not registered: {set(expected) - set(by_path)}"
    for name in expected:
        row = by_path[name]
        if Path(name).name in NO_SPEECH_FILES:
            assert row.status == "no_speech", f"{name}: {row.status} with {row.num_segments} segments"
        else:
            assert row.status == "done", f"{name}: {row.status} {row.reason}"
            assert row.num_segments >= 1, name
    run = PrepRun.objects.get()
    assert run.status == "completed", run.reason
    assert run.num_selected == len(by_path)
    assert f"run {run.pk} completed" in out


def test_corpus_segments_are_16k_mono_wavs_matching_rows(prepared_corpus):
    segments = list(Segment.objects.all())

    assert segments
    for segment in segments:
        with wave.open(segment.path) as stream:
            assert (stream.getframerate(), stream.getnchannels(), stream.getsampwidth()) == (16000, 1, 2), segment.path
            seconds = stream.getnframes() / 16000
        assert abs(seconds - segment.duration) <= 0.001, segment.path
        assert segment.duration <= MAX_SEGMENT_S + 1e-6, segment.path
        assert abs((segment.end - segment.start) - segment.duration) <= 0.001


def test_corpus_manifest_matches_segment_rows(prepared_corpus):
    _corpus, output, _out = prepared_corpus
    with open(output / "manifest.jsonl", encoding="utf-8") as stream:
        lines = [json.loads(line) for line in stream]
    rows = list(Segment.objects.select_related("audio_file").order_by("audio_file_id", "index"))

    assert len(lines) == len(rows)
    assert len({line["audio_filepath"] for line in lines}) == len(lines)
    for line, row in zip(lines, rows):
        assert line["audio_filepath"] == row.path
        assert line["source_id"] == row.audio_file_id
        assert line["source_path"] == row.audio_file.path
        assert (line["start"], line["end"], line["duration"]) == (row.start, row.end, row.duration)
    on_disk = {str(path) for path in (output / "segments").rglob("*.wav")}
    assert on_disk == {row.path for row in rows}


def test_corpus_stereo_keeps_both_speakers(prepared_corpus):
    corpus, _output, _out = prepared_corpus
    source = corpus / "stereo_two_speakers_16k.wav"
    row = AudioFile.objects.get(path=str(source))
    spans = list(Segment.objects.filter(audio_file=row).values_list("start", "end"))
    covered = np.zeros(int(row.duration * 100) + 1, dtype=bool)
    for start, end in spans:
        covered[int(start * 100) : int(end * 100) + 1] = True

    for channel in ("left", "right"):
        samples, _info = decode_to_pcm(str(source), channel=channel)
        frames = samples[: samples.size // 160 * 160].reshape(-1, 160).astype(np.float64)
        level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-9)
        active = level > np.percentile(level, 95) - 25
        share = np.mean(covered[: active.size][active])
        assert share >= 0.9, f"{channel} channel: only {share:.0%} of its active frames are in segments"


def test_corpus_rerun_does_no_work(prepared_corpus):
    _corpus, output, _out = prepared_corpus
    before = snapshot(output / "segments") | snapshot(output / "manifests")
    manifest_before = (output / "manifest.jsonl").read_bytes()
    rows_before = list(Segment.objects.values_list("id", "path", "start", "end"))
    files_before = list(AudioFile.objects.values_list("id", "status", "processed_at"))

    out = StringIO()
    call_command("prepare_audio", "--num_workers", "4", stdout=out, stderr=StringIO())

    assert snapshot(output / "segments") | snapshot(output / "manifests") == before
    assert (output / "manifest.jsonl").read_bytes() == manifest_before
    assert list(Segment.objects.values_list("id", "path", "start", "end")) == rows_before
    assert list(AudioFile.objects.values_list("id", "status", "processed_at")) == files_before
    assert PrepRun.objects.latest("id").num_selected == 0
