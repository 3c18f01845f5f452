"""The app's settings: one `AUDIOPREP` dict, read when used, never at import.

Reading lazily keeps `override_settings(AUDIOPREP=...)` working in tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Folder that receives segments, manifests and run logs.
    "OUTPUT_DIR": "audioprep-output",
    "NUM_WORKERS": 2,
    # "webrtc" or the path of a Silero VAD model in ONNX form.
    "VAD_MODEL": "webrtc",
    # Claims per file before it ends failed with its last reason.
    "MAX_ATTEMPTS": 3,
    # Seconds a claim stays valid without renewal; a run renews its claims
    # every LEASE_SECONDS / 3 while files are in flight.
    "LEASE_SECONDS": 600,
    # Multiprocessing start method of the worker pool.
    "START_METHOD": "spawn",
    # A file whose header announces at least this many seconds is decoded in
    # a helper process while its worker detects speech, when a core is idle
    # (same output, two cores on one file). 0 turns the helper off.
    "DECODE_HELPER_MIN_SECONDS": 600.0,
    # Seconds in-flight files may take to finish after the first SIGINT/SIGTERM.
    "STOP_GRACE_SECONDS": 10,
    # Fault injection for failure tests; see audioprep.pipeline.process.apply_test_hook.
    "TEST_HOOK": "",
    # Keyword arguments of audioprep.pipeline.config.PrepConfig.
    "SEGMENTATION": {},
    # Extensions (lowercase) that import_audio registers from folders.
    "EXTENSIONS": [".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac", ".wma", ".aif", ".aiff", ".webm", ".mka"],
}


def get(name: str) -> Any:
    """Return one app setting, falling back to its default."""
    if name not in DEFAULTS:
        raise KeyError(f"unknown audioprep setting {name!r}; known: {', '.join(sorted(DEFAULTS))}")
    user = getattr(settings, "AUDIOPREP", {}) or {}
    return user.get(name, DEFAULTS[name])


def output_dir() -> Path:
    return Path(get("OUTPUT_DIR")).expanduser()
