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
