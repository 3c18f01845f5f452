"""The admin in a real headless Chromium: log in, review a run, play a segment.

Needs Debian's Chromium at /usr/bin/chromium and the `playwright` Python
package (its own browser downloads are not used). Screenshots of each step
are written to the test's tmp_path under `screenshots/`.
"""

from __future__ import annotations

import os
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command

from audioprep.models import AudioFile, PrepRun

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--no-proxy-server",
    "--autoplay-policy=no-user-gesture-required",
]
# Each browser step waits at most this long, so a broken page fails the test quickly.
STEP_TIMEOUT_MS = 15_000
USERNAME = "reviewer"
PASSWORD = "a-long-test-password-42"
GERMAN_NAME = "Grüße aus Köln.wav"
JAPANESE_NAME = "録音 テスト 01.wav"

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found; install Debian's chromium package to run the browser tests", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed (pip install -e '.[dev]')")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def reviewed_run(make_wav, tmp_path, output_dir) -> PrepRun:
    """Prepare two recordings with non-ASCII names and create a staff reviewer."""
    make_wav(GERMAN_NAME)
    make_wav(JAPANESE_NAME, seed=2)
    call_command("import_audio", str(tmp_path / "audio"), stdout=StringIO())
    call_command("prepare_audio", "--num_workers", "1", stdout=StringIO(), stderr=StringIO())

    reviewer = User.objects.create_user(USERNAME, password=PASSWORD, is_staff=True)
    for codename in ("view_audiofile", "view_preprun", "view_fileresult", "view_segment"):
        reviewer.user_permissions.add(Permission.objects.get(content_type__app_label="audioprep", codename=codename))
    return PrepRun.objects.get()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in the test thread, and Django
    # rejects ORM calls from a thread with a running loop unless this is set.
    # The test thread makes only short reads while no request is in flight.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    args = list(CHROMIUM_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args, timeout=60_000)
        yield chromium
        chromium.close()


def _log_in(page, base_url: str) -> None:
    page.goto(f"{base_url}/admin/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def _play_first_segment(page) -> dict:
    """Start the first segment player muted and return its state after a short wait."""
    return page.evaluate(
        """async () => {
            const audio = document.querySelector("audio");
            audio.muted = true;
            await audio.play();
            const started = Date.now();
            while (audio.currentTime < 0.2 && !audio.error && Date.now() - started < 5000) {
                await new Promise((resolve) => setTimeout(resolve, 100));
            }
            const state = {
                currentTime: audio.currentTime,
                readyState: audio.readyState,
                networkState: audio.networkState,
                error: audio.error ? audio.error.code : null,
                src: audio.currentSrc,
            };
            audio.pause();
            return state;
        }"""
    )


def test_reviewer_plays_segment(reviewed_run, live_server, browser, screenshots):
    german = AudioFile.objects.get(path__endswith=GERMAN_NAME)
    audio_responses = []
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.on("response", lambda response: audio_responses.append(response.status) if "/audio.wav" in response.url else None)

    _log_in(page, live_server.url)
    page.goto(f"{live_server.url}/admin/audioprep/audiofile/")
    file_list_text = page.inner_text("#result_list")
    page.screenshot(path=screenshots / "00-file-list.png", full_page=True)
    page.goto(f"{live_server.url}/admin/audioprep/preprun/")
    page.screenshot(path=screenshots / "01-run-list.png", full_page=True)
    page.click(f'#result_list a[href$="/preprun/{reviewed_run.pk}/change/"]')
    page.wait_for_selector("#file-results")
    run_text = page.inner_text("#file-results")
    page.screenshot(path=screenshots / "02-run.png", full_page=True)
    page.click(f'#file-results a:has-text("{GERMAN_NAME}")')
    page.wait_for_selector("audio")
    page.wait_for_function("() => document.querySelector('img.audioprep-waveform').complete")
    waveform_width = page.evaluate("() => document.querySelector('img.audioprep-waveform').naturalWidth")
    heading = page.inner_text("#content")
    players = page.locator("audio").count()
    state = _play_first_segment(page)
    page.screenshot(path=screenshots / "03-file.png", full_page=True)
    context.close()

    assert GERMAN_NAME in file_list_text
    assert JAPANESE_NAME in file_list_text
    assert GERMAN_NAME in run_text
    assert JAPANESE_NAME in run_text
    assert GERMAN_NAME in heading
    assert players == german.num_segments
    assert waveform_width > 0
    assert state["error"] is None, state
    assert state["readyState"] >= 2, state
    assert state["currentTime"] > 0, state
    assert audio_responses
    assert set(audio_responses) <= {200, 206}, audio_responses


def test_anonymous_browser_gets_login_page(reviewed_run, live_server, browser, screenshots):
    segment = reviewed_run.segments.first()
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)

    page.goto(f"{live_server.url}/audioprep/segments/{segment.pk}/audio.wav")
    url = page.url
    has_login_form = page.locator("#id_username").count() == 1
    page.screenshot(path=screenshots / "04-anonymous-audio.png", full_page=True)
    context.close()

    assert "/admin/login/" in url
    assert has_login_form

