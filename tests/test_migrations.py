"""Models and migrations agree, and the system checks pass."""

from io import StringIO

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_migrations_are_current():
    out = StringIO()

    call_command("makemigrations", "audioprep", "--check", "--dry-run", stdout=out)

    assert "No changes detected" in out.getvalue()


def test_system_checks_pass():
    out = StringIO()

    call_command("check", stdout=out)

    assert "no issues" in out.getvalue()


@pytest.mark.parametrize("value", [-1, "600", None, True])
def test_invalid_decode_helper_setting_reported(settings, value):
    from audioprep.checks import check_settings

    settings.AUDIOPREP = {**settings.AUDIOPREP, "DECODE_HELPER_MIN_SECONDS": value}

    ids = [error.id for error in check_settings()]

    assert ids == ["audioprep.E006"]


@pytest.mark.parametrize("value", [0, 600, 12.5])
def test_valid_decode_helper_setting_accepted(settings, value):
    from audioprep.checks import check_settings

    settings.AUDIOPREP = {**settings.AUDIOPREP, "DECODE_HELPER_MIN_SECONDS": value}

    assert check_settings() == []
