"""The fault-injection hook of the failure tests (AUDIOPREP["TEST_HOOK"], empty in normal runs)."""

from __future__ import annotations


def hook_items(test_hook: str) -> list[tuple[str, str]]:
    """Return the (action, argument) pairs of a hook written as comma-separated `action=argument` items."""
    items = []
    for item in test_hook.split(","):
        action, _, argument = item.strip().partition("=")
        items.append((action, argument))
    return items
