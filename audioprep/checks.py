"""System checks: decoder and VAD usable, settings valid."""

from __future__ import annotations

from django.core.checks import Error, Tags, register

from . import conf


@register(Tags.compatibility)
def check_audio_components(app_configs=None, **kwargs) -> list[Error]:
    from .pipeline.audio_io import check_decoder
    from .pipeline.errors import EnvironmentCheckError
    from .pipeline.vad.webrtc import check_webrtcvad

    errors = []
    try:
        check_decoder()
    except EnvironmentCheckError as exc:
        errors.append(Error(str(exc), hint="Install the PyAV wheel: pip install av", id="audioprep.E001"))
    try:
        check_webrtcvad()
    except EnvironmentCheckError as exc:
        errors.append(Error(str(exc), hint="pip install webrtcvad-wheels", id="audioprep.E002"))
    return errors


@register()
def check_settings(app_configs=None, **kwargs) -> list[Error]:
    from .pipeline.config import PrepConfig

    errors = []
    try:
        PrepConfig.from_dict(dict(conf.get("SEGMENTATION")))
    except (TypeError, ValueError) as exc:
        errors.append(
            Error(
                f"AUDIOPREP['SEGMENTATION'] is invalid: {exc}",
                hint="Fix the value in the settings, or in the environment variable that sets it: the bundled project "
                "reads AUDIOPREP_<FIELD IN CAPITALS> (for example AUDIOPREP_VAD_AGGRESSIVENESS; see .env.example).",
                id="audioprep.E003",
            )
        )
    if conf.get("START_METHOD") not in ("spawn", "forkserver", "fork"):
        errors.append(
            Error(
                f"AUDIOPREP['START_METHOD'] must be spawn, forkserver or fork, got {conf.get('START_METHOD')!r}",
                id="audioprep.E004",
            )
        )
    helper_seconds = conf.get("DECODE_HELPER_MIN_SECONDS")
    if isinstance(helper_seconds, bool) or not isinstance(helper_seconds, (int, float)) or not helper_seconds >= 0:
        errors.append(
            Error(f"AUDIOPREP['DECODE_HELPER_MIN_SECONDS'] must be a number of seconds >= 0, got {helper_seconds!r}", id="audioprep.E006")
        )
    for name in ("NUM_WORKERS", "MAX_ATTEMPTS", "LEASE_SECONDS"):
        value = conf.get(name)
        if not isinstance(value, int) or value < 1:
            errors.append(Error(f"AUDIOPREP[{name!r}] must be a positive integer, got {value!r}", id="audioprep.E005"))
    return errors
