"""Scorer arithmetic and the evaluate_vad command on generated files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audioprep import service
from audioprep.demo.synth import speech_signal, write_wav
from audioprep.evaluation import boundary_hit_rate, merge_intervals, score_frames
from audioprep.pipeline.config import BACKEND_DEFAULTS

# Speech from 1.0-3.0 s and 4.0-7.0 s of a 7.8 s file, as in tests/conftest.py.
LAYOUT = [("silence", 1.0), ("speech", 2.0), ("silence", 1.0), ("speech", 3.0), ("silence", 0.8)]
REFERENCE = [[1.0, 3.0], [4.0, 7.0]]


def test_score_identical_intervals():
    scores = score_frames([(1.0, 2.0), (3.0, 4.5)], [(1.0, 2.0), (3.0, 4.5)], duration_s=6.0)
    assert scores.f1 == 1.0
    assert scores.precision == 1.0
    assert scores.recall == 1.0
    assert scores.false_alarm_rate == 0.0
    assert scores.detection_error_rate == 0.0


def test_score_disjoint_intervals():
    scores = score_frames([(0.0, 1.0)], [(2.0, 3.0)], duration_s=4.0)
    assert scores.f1 == 0.0
    assert scores.true_positive == 0
    assert scores.miss_rate == 1.0
    # 100 false-alarm frames out of 300 reference non-speech frames.
    assert scores.false_alarm_rate == pytest.approx(1 / 3)
    assert scores.detection_error_rate == pytest.approx(2.0)


def test_score_half_overlap():
    # Reference 0-2 s, hypothesis 1-3 s on a 4 s file: 100 frames each of
    # hit, false alarm and miss, and 100 correct non-speech frames.
    scores = score_frames([(0.0, 2.0)], [(1.0, 3.0)], duration_s=4.0)
    assert (scores.true_positive, scores.false_positive, scores.false_negative, scores.true_negative) == (100, 100, 100, 100)
    assert scores.precision == pytest.approx(0.5)
    assert scores.recall == pytest.approx(0.5)
    assert scores.f1 == pytest.approx(0.5)
    assert scores.false_alarm_rate == pytest.approx(0.5)
    assert scores.detection_error_rate == pytest.approx(1.0)


def test_collar_excludes_boundary_frames():
    # The hypothesis is 0.2 s late at both ends; a 0.25 s collar hides it.
    reference = [(1.0, 3.0)]
    hypothesis = [(1.2, 3.2)]
    strict = score_frames(reference, hypothesis, duration_s=4.0)
    collared = score_frames(reference, hypothesis, duration_s=4.0, collar_s=0.25)
    assert strict.f1 < 1.0
    assert collared.f1 == 1.0
    # Frames within 0.25 s of 1.0 s and 3.0 s (50 each) are not counted.
    assert collared.true_positive + collared.false_positive + collared.false_negative + collared.true_negative == 300


def test_score_without_reference_speech():
    scores = score_frames([], [], duration_s=2.0)
    assert scores.f1 == 1.0
    assert scores.detection_error_rate is None
    assert scores.false_alarm_rate == 0.0


def test_boundary_hits_join_touching_pieces():
    # Two pieces that meet at 2.0 s count as one span 1.0-3.1 s.
    assert boundary_hit_rate([(1.0, 3.0)], [(1.1, 2.0), (2.0, 3.1)]) == 1.0
    assert boundary_hit_rate([(1.0, 3.0)], [(1.5, 3.0)]) == 0.5
    assert merge_intervals([(2.0, 3.0), (1.0, 2.0)], max_gap_s=1e-6) == [(1.0, 3.0)]


@pytest.fixture
def reference_folder(tmp_path):
    folder = tmp_path / "reference"
    for seed in (1, 2):
        audio = write_wav(folder / f"clip{seed}.wav", speech_signal(LAYOUT, seed=seed))
        audio.with_suffix(".json").write_text(json.dumps({"speech_fine": REFERENCE}))
    # Audio without a reference is skipped.
    write_wav(folder / "unlabelled.wav", speech_signal(LAYOUT, seed=3))
    return folder


def test_evaluate_vad_command_reports(reference_folder, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    call_command("evaluate_vad", str(reference_folder), "--json", str(report_path), "--vad_aggressiveness", "3")
    output = capsys.readouterr().out
    assert "clip1.wav" in output
    assert "unlabelled.wav" not in output
    assert "mean of 2 files" in output
    report = json.loads(report_path.read_text())
    assert [item["name"] for item in report["files"]] == ["clip1.wav", "clip2.wav"]
    assert report["config"]["vad_aggressiveness"] == 3
    for item in report["files"]:
        assert item["num_segments"] >= 2
        assert item["collared"]["f1"] > 0.9
    assert report["summary"]["strict"]["detection_error_rate"] is not None


def test_evaluate_vad_sweep(reference_folder, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    call_command("evaluate_vad", str(reference_folder), "--sweep", "--json", str(report_path))
    output = capsys.readouterr().out
    assert "best first by strict DetER" in output
    sweep = json.loads(report_path.read_text())["sweep"]
    assert len(sweep) > 1
    rates = [item["summary"]["strict"]["detection_error_rate"] for item in sweep]
    assert rates == sorted(rates)


def test_evaluate_vad_rejects_folder_without_references(tmp_path):
    write_wav(tmp_path / "only.wav", speech_signal(LAYOUT))
    with pytest.raises(CommandError, match="no audio file with a JSON reference"):
        call_command("evaluate_vad", str(tmp_path))


def test_evaluate_vad_rejects_missing_model(reference_folder, tmp_path):
    with pytest.raises(CommandError, match="VAD model not found"):
        call_command("evaluate_vad", str(reference_folder), "--model_for_vad", str(tmp_path / "missing.onnx"))


def test_build_config_uses_model_backend_defaults(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model")
    config = service.build_config({"model_for_vad": str(model)})
    assert config.vad_model == str(model)
    for name, value in BACKEND_DEFAULTS["silero"].items():
        assert getattr(config, name) == value
    explicit = service.build_config({"model_for_vad": str(model), "pad_ms": 50, "energy_gate_db": 6.0})
    assert (explicit.pad_start_ms, explicit.pad_end_ms) == (50, 50)
    assert explicit.energy_gate_db == 6.0


def test_evaluate_vad_silero_report_holds_backend_defaults(reference_folder, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed; pip install 'audioprep[silero]'")
    spec = importlib.util.find_spec("silero_vad")
    model = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx" if spec else None
    if model is None or not model.is_file():
        pytest.skip("silero-vad model not installed; pip install --no-deps silero-vad")
    report_path = tmp_path / "report.json"
    call_command("evaluate_vad", str(reference_folder), "--model_for_vad", str(model), "--json", str(report_path))
    report = json.loads(report_path.read_text())
    for name, value in BACKEND_DEFAULTS["silero"].items():
        assert report["config"][name] == value
    # The generated clips are not real speech, so only the run is checked.
    assert [item["error"] for item in report["files"]] == ["", ""]
