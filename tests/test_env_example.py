"""The settings read no environment variable that .env.example leaves out."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT


def test_env_example_lists_every_variable():
    settings_text = (REPO_ROOT / "project" / "settings.py").read_text(encoding="utf-8")
    example_text = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")
    read = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z][A-Z0-9_]+)"', settings_text))
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example_text, flags=re.MULTILINE))

    assert len(read) >= 15
    assert sorted(read - listed) == []
