"""Shared fixtures: generated audio, output folders, real data folders, subprocess runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from loguru import logger

from audioprep.demo.synth import speech_signal, write_wav

REPO_ROOT = Path(__file__).resolve().parent.parent
# Speech from 1.0-3.0 s and 4.0-7.0 s of a 7.8 s file.
TWO_REGION_LAYOUT = [("silence", 1.0), ("speech", 2.0), ("silence", 1.0), ("speech", 3.0), ("silence", 0.8)]


def _folder_from_env(variable: str, what: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set; point it at the {what} folder to run this test")
    folder = Path(value)
    if not folder.is_dir():
        pytest.fail(f"{variable}={value} is not a folder")
    return folder


@pytest.fixture
def corpus_dir() -> Path:
    return _folder_from_env("AUDIOPREP_TEST_CORPUS", "real-speech corpus")


@pytest.fixture
def badinput_dir() -> Path:
    return _folder_from_env("AUDIOPREP_TEST_BADINPUT", "bad-input cases")


@pytest.fixture
def output_dir(tmp_path, settings) -> Path:
    folder = tmp_path / "output"
    settings.AUDIOPREP = {**settings.AUDIOPREP, "OUTPUT_DIR": str(folder)}
    return folder


@pytest.fixture
def two_region_wav(tmp_path) -> Path:
    return write_wav(tmp_path / "audio" / "two_regions.wav", speech_signal(TWO_REGION_LAYOUT, seed=1))


@pytest.fixture
def make_wav(tmp_path):
    """Return a factory writing a generated speech WAV under tmp_path/audio."""

    def make(name: str, layout=None, sample_rate: int = 16000, channels: int = 1, seed: int = 0) -> Path:
        signal = speech_signal(layout or TWO_REGION_LAYOUT, sample_rate=sample_rate, seed=seed)
        return write_wav(tmp_path / "audio" / name, signal, sample_rate, channels)

    return make


@pytest.fixture
def loguru_caplog(caplog):
    """Route loguru records into pytest's caplog."""
    handler_id = logger.add(caplog.handler, format="{message}", level=0)
    yield caplog
    logger.remove(handler_id)


def database_url() -> str:
    """Return a DATABASE_URL naming the test database the tests use."""
    from django.db import connection

    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or 5432
    user = settings.get("USER") or "postgres"
    return f"postgres://{user}@{host}:{port}/{settings['NAME']}"


@pytest.fixture
def run_manage(output_dir):
    """Run `manage.py` in a subprocess on the test database; return the CompletedProcess."""

    def run(*args: str, timeout: float = 300, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        child_env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "AUDIOPREP_OUTPUT_DIR": str(output_dir),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, str(REPO_ROOT / "manage.py"), *args],
            cwd=REPO_ROOT,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    return run
