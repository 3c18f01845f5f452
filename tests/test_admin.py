"""Admin pages and the staff-only file views, on rows and files written by a real pipeline run."""

from __future__ import annotations

import os
import wave
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.contrib import admin, messages
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.urls import reverse

from audioprep import views
from audioprep.models import AudioFile, FileResult, PrepRun, Segment

pytestmark = pytest.mark.django_db(transaction=True)

GERMAN_NAME = "Grüße aus Köln.wav"
JAPANESE_NAME = "録音 テスト 01.wav"
SILENT_LAYOUT = [("silence", 2.0)]
APP_MODELS = [AudioFile, PrepRun, FileResult, Segment]
PASSWORD = "a-long-test-password-42"


@dataclass
class Prepared:
    run: PrepRun
    german: AudioFile
    japanese: AudioFile
    silent: AudioFile
    broken: AudioFile
    output_dir: Path


@pytest.fixture
def prepared(make_wav, tmp_path, output_dir) -> Prepared:
    """Run import_audio and prepare_audio on two speech files, a silent one and a broken one."""
    make_wav(GERMAN_NAME)
    make_wav(JAPANESE_NAME, seed=2)
    make_wav("silent.wav", layout=SILENT_LAYOUT)
    broken = tmp_path / "audio" / "broken.wav"
    broken.write_text("id,name\n1,not audio\n")
    call_command("import_audio", str(tmp_path / "audio"), stdout=StringIO())
    call_command("prepare_audio", "--num_workers", "1", stdout=StringIO(), stderr=StringIO())

    by_name = {Path(audio_file.path).name: audio_file for audio_file in AudioFile.objects.all()}
    return Prepared(
        run=PrepRun.objects.get(),
        german=by_name[GERMAN_NAME],
        japanese=by_name[JAPANESE_NAME],
        silent=by_name["silent.wav"],
        broken=by_name["broken.wav"],
        output_dir=output_dir,
    )


def _user(username: str, is_staff: bool = False, is_superuser: bool = False, permissions: tuple[str, ...] = ()) -> User:
    user = User.objects.create_user(username, password=PASSWORD, is_staff=is_staff, is_superuser=is_superuser)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(content_type__app_label="audioprep", codename=codename))
    return user


VIEW_PERMISSIONS = ("view_audiofile", "view_preprun", "view_fileresult", "view_segment")


@pytest.fixture
def users(db) -> dict[str, User | None]:
    return {
        "anonymous": None,
        "non_staff": _user("reader", permissions=VIEW_PERMISSIONS),
        "staff_without_permission": _user("helper", is_staff=True),
        "staff_viewer": _user("reviewer", is_staff=True, permissions=VIEW_PERMISSIONS),
        "staff_editor": _user("editor", is_staff=True, permissions=VIEW_PERMISSIONS + ("change_audiofile",)),
        "superuser": _user("root", is_staff=True, is_superuser=True),
    }


@pytest.fixture
def as_user(client, users):
    """Return a function that logs the test client in as one of `users` (or out, for anonymous)."""

    def log_in(kind: str):
        client.logout()
        if users[kind] is not None:
            client.force_login(users[kind])
        return client

    return log_in


def _changelist(model) -> str:
    return reverse(f"admin:audioprep_{model._meta.model_name}_changelist")


def _change(obj) -> str:
    return reverse(f"admin:audioprep_{obj._meta.model_name}_change", args=[obj.pk])


def _body(response) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


# --- pages for a superuser --------------------------------------------------


@pytest.mark.parametrize("model", APP_MODELS, ids=lambda model: model.__name__)
def test_changelist_renders_for_superuser(model, prepared, as_user):
    response = as_user("superuser").get(_changelist(model))

    assert response.status_code == 200


def test_audiofile_changelist_shows_columns_and_names(prepared, as_user):
    response = as_user("superuser").get(_changelist(AudioFile))
    text = response.content.decode()

    assert GERMAN_NAME in text
    assert JAPANESE_NAME in text
    for header in ("path", "status", "reason", "duration", "sample rate", "channels", "codec", "num segments", "speech ratio"):
        assert header in text.lower(), header
    assert "decode:" in text


def test_audiofile_changelist_filter_and_search(prepared, as_user):
    client = as_user("superuser")

    failed = client.get(_changelist(AudioFile), {"status__exact": "failed"}).content.decode()
    searched = client.get(_changelist(AudioFile), {"q": "Köln"}).content.decode()

    assert "broken.wav" in failed
    assert GERMAN_NAME not in failed
    assert GERMAN_NAME in searched
    assert JAPANESE_NAME not in searched


def test_preprun_changelist_filters_and_dates(prepared, as_user):
    client = as_user("superuser")

    completed = client.get(_changelist(PrepRun), {"status__exact": prepared.run.status})
    running = client.get(_changelist(PrepRun), {"status__exact": "running"})
    by_year = client.get(_changelist(PrepRun), {"started_at__year": str(prepared.run.started_at.year)})

    assert completed.context["cl"].result_count == 1
    assert running.context["cl"].result_count == 0
    assert by_year.context["cl"].result_count == 1


def test_preprun_change_page_shows_run(prepared, as_user):
    run = prepared.run
    response = as_user("superuser").get(_change(run))
    text = response.content.decode()

    assert response.status_code == 200
    assert run.config_hash in text
    assert "&quot;pad_ms&quot;: " in text
    assert reverse("audioprep:run-log", args=[run.pk]) in text
    assert "audioprep-log-tail" in text
    assert f"File results ({run.num_selected})" in text
    assert reverse("admin:audioprep_audiofile_change", args=[prepared.german.pk]) in text
    assert GERMAN_NAME in text
    assert "decode:" in text


def test_preprun_log_tail_is_last_lines(prepared, as_user):
    log_path = Path(prepared.run.log_path)
    with open(log_path, "a", encoding="utf-8") as stream:
        for number in range(500):
            stream.write(f"padding line {number}\n")

    text = as_user("superuser").get(_change(prepared.run)).content.decode()

    assert "padding line 499" in text
    assert "padding line 300" in text
    assert "padding line 299" not in text


def test_audiofile_change_page_shows_segments_and_history(prepared, as_user):
    german = prepared.german
    response = as_user("superuser").get(_change(german))
    text = response.content.decode()

    assert response.status_code == 200
    assert GERMAN_NAME in text
    assert german.num_segments == 2
    assert text.count('<audio controls preload="none"') == german.num_segments
    for segment in german.segments.all():
        assert reverse("audioprep:segment-audio", args=[segment.pk]) in text
    assert reverse("audioprep:file-waveform", args=[german.pk]) in text
    assert "run history" in text.lower()
    assert reverse("admin:audioprep_preprun_change", args=[prepared.run.pk]) in text


@pytest.mark.parametrize("kind", ["japanese", "silent", "broken"])
def test_audiofile_change_page_renders(kind, prepared, as_user):
    audio_file = getattr(prepared, kind)

    response = as_user("superuser").get(_change(audio_file))

    assert response.status_code == 200
    assert audio_file.path in response.content.decode()


def test_segment_and_fileresult_change_pages_render(prepared, as_user):
    client = as_user("superuser")

    segment_page = client.get(_change(Segment.objects.first()))
    result_page = client.get(_change(FileResult.objects.first()))

    assert segment_page.status_code == 200
    assert result_page.status_code == 200


@pytest.mark.parametrize("model", APP_MODELS, ids=lambda model: model.__name__)
def test_add_change_delete_forbidden(model, prepared, as_user):
    client = as_user("superuser")
    obj = model.objects.first()
    delete_url = reverse(f"admin:audioprep_{model._meta.model_name}_delete", args=[obj.pk])

    assert client.get(reverse(f"admin:audioprep_{model._meta.model_name}_add")).status_code == 403
    assert client.get(delete_url).status_code == 403
    assert client.post(_change(obj), {}).status_code == 403
    assert model.objects.filter(pk=obj.pk).exists()


def test_model_admin_checks_pass():
    registered = [model_admin for model, model_admin in admin.site._registry.items() if model._meta.app_label == "audioprep"]

    assert {model_admin.model for model_admin in registered} == set(APP_MODELS)
    for model_admin in registered:
        assert model_admin.check() == [], model_admin


# --- access rules -----------------------------------------------------------

ACCESS_CASES = [
    ("anonymous", "login"),
    ("non_staff", "login"),
    ("staff_without_permission", 403),
    ("staff_viewer", 200),
    ("superuser", 200),
]


def _file_urls(prepared: Prepared) -> dict[str, str]:
    return {
        "segment audio": reverse("audioprep:segment-audio", args=[prepared.german.segments.first().pk]),
        "run log": reverse("audioprep:run-log", args=[prepared.run.pk]),
        "waveform": reverse("audioprep:file-waveform", args=[prepared.german.pk]),
    }


@pytest.mark.parametrize(("kind", "expected"), ACCESS_CASES)
def test_file_views_access_rules(kind, expected, prepared, as_user):
    client = as_user(kind)

    for name, url in _file_urls(prepared).items():
        response = client.get(url)
        if expected == "login":
            assert response.status_code == 302, name
            assert response["Location"].startswith(reverse("admin:login")), name
        else:
            assert response.status_code == expected, name


def test_file_views_require_own_view_permission(prepared, users, client):
    """Each view checks the permission of its own model, not that of another."""
    urls = _file_urls(prepared)
    only_runs = _user("run-reviewer", is_staff=True, permissions=("view_preprun",))
    client.force_login(only_runs)

    assert client.get(urls["run log"]).status_code == 200
    assert client.get(urls["segment audio"]).status_code == 403
    assert client.get(urls["waveform"]).status_code == 403


@pytest.mark.parametrize(("kind", "expected"), ACCESS_CASES)
def test_admin_pages_access_rules(kind, expected, prepared, as_user):
    client = as_user(kind)

    for url in (_changelist(PrepRun), _change(prepared.run), _change(prepared.german)):
        response = client.get(url)
        if expected == "login":
            assert response.status_code == 302, url
            assert response["Location"].startswith(reverse("admin:login")), url
        else:
            assert response.status_code == expected, url


def test_segment_audio_body_is_wav_file(prepared, as_user):
    segment = prepared.german.segments.first()

    response = as_user("staff_viewer").get(reverse("audioprep:segment-audio", args=[segment.pk]))

    assert response["Content-Type"] == "audio/wav"
    assert response["Accept-Ranges"] == "bytes"
    assert _body(response) == Path(segment.path).read_bytes()


def test_run_log_body_is_log_file(prepared, as_user):
    response = as_user("staff_viewer").get(reverse("audioprep:run-log", args=[prepared.run.pk]))

    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert _body(response) == Path(prepared.run.log_path).read_bytes()


# --- HTTP Range -------------------------------------------------------------


def _range_get(client, url: str, header: str | None):
    return client.get(url, headers={"Range": header}) if header is not None else client.get(url)


def test_segment_audio_range_requests(prepared, as_user):
    segment = prepared.german.segments.first()
    url = reverse("audioprep:segment-audio", args=[segment.pk])
    data = Path(segment.path).read_bytes()
    size = len(data)
    client = as_user("staff_viewer")
    # (Range header, expected status, expected Content-Range, expected body)
    cases = [
        ("bytes=0-99", 206, f"bytes 0-99/{size}", data[:100]),
        ("bytes=100-", 206, f"bytes 100-{size - 1}/{size}", data[100:]),
        ("bytes=-50", 206, f"bytes {size - 50}-{size - 1}/{size}", data[-50:]),
        (f"bytes=10-{size + 1000}", 206, f"bytes 10-{size - 1}/{size}", data[10:]),
        (f"bytes={size - 1}-{size - 1}", 206, f"bytes {size - 1}-{size - 1}/{size}", data[-1:]),
        (f"bytes=-{size + 10}", 206, f"bytes 0-{size - 1}/{size}", data),
        (f"bytes={size}-", 416, f"bytes */{size}", b""),
        (f"bytes={size + 5}-{size + 10}", 416, f"bytes */{size}", b""),
        ("bytes=-0", 416, f"bytes */{size}", b""),
        ("bytes=50-10", 200, None, data),
        ("bytes=0-1,5-6", 200, None, data),
        ("items=0-10", 200, None, data),
        (None, 200, None, data),
    ]

    for header, status, content_range, body in cases:
        response = _range_get(client, url, header)
        assert response.status_code == status, header
        assert response.get("Content-Range") == content_range, header
        assert response["Accept-Ranges"] == "bytes", header
        if status != 416:
            assert _body(response) == body, header
            assert int(response["Content-Length"]) == len(body), header


def test_run_log_range_request(prepared, as_user):
    url = reverse("audioprep:run-log", args=[prepared.run.pk])
    data = Path(prepared.run.log_path).read_bytes()

    response = as_user("staff_viewer").get(url, headers={"Range": "bytes=0-9"})

    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 0-9/{len(data)}"
    assert _body(response) == data[:10]


# --- path containment -------------------------------------------------------


@pytest.fixture
def outside_file(tmp_path) -> Path:
    """A readable WAV file outside every run's output folder."""
    path = tmp_path / "private" / "outside.wav"
    path.parent.mkdir()
    path.write_bytes(b"RIFF-not-for-download")
    return path


def _segment_at(prepared: Prepared, path: str | Path, run: PrepRun | None = None) -> Segment:
    return Segment.objects.create(
        audio_file=prepared.silent, run=run or prepared.run, index=99, start=0.0, end=1.0, duration=1.0,
        path=str(path), peak_dbfs=-1.0, rms_dbfs=-20.0,
    )


def test_segment_outside_output_not_served(prepared, outside_file, as_user):
    client = as_user("superuser")
    dotdot = prepared.output_dir / "segments" / ".." / ".." / "private" / "outside.wav"
    link = prepared.output_dir / "segments" / "link.wav"
    os.symlink(outside_file, link)
    cases = {
        "absolute path outside": outside_file,
        "dot-dot path": dotdot,
        "symbolic link inside pointing outside": link,
    }
    assert dotdot.exists()

    for name, path in cases.items():
        segment = _segment_at(prepared, path)
        response = client.get(reverse("audioprep:segment-audio", args=[segment.pk]))
        assert response.status_code == 404, name
        assert b"RIFF-not-for-download" not in _body(response), name
        segment.delete()


def test_segment_without_run_not_served(prepared, as_user):
    path = prepared.german.segments.first().path
    segment = Segment.objects.create(
        audio_file=prepared.silent, run=None, index=98, start=0.0, end=1.0, duration=1.0,
        path=path, peak_dbfs=-1.0, rms_dbfs=-20.0,
    )

    response = as_user("superuser").get(reverse("audioprep:segment-audio", args=[segment.pk]))

    assert response.status_code == 404


def test_run_log_outside_output_not_served(prepared, outside_file, as_user):
    client = as_user("superuser")
    run = prepared.run
    url = reverse("audioprep:run-log", args=[run.pk])

    for path in (outside_file, prepared.output_dir / "logs" / ".." / ".." / "private" / "outside.wav"):
        PrepRun.objects.filter(pk=run.pk).update(log_path=str(path))
        response = client.get(url)
        assert response.status_code == 404, path
        assert b"RIFF-not-for-download" not in _body(response), path


def test_file_views_unknown_ids_not_found(prepared, as_user):
    client = as_user("superuser")

    assert client.get(reverse("audioprep:segment-audio", args=[999999])).status_code == 404
    assert client.get(reverse("audioprep:run-log", args=[999999])).status_code == 404
    assert client.get(reverse("audioprep:file-waveform", args=[999999])).status_code == 404


def test_file_views_reject_post(prepared, as_user):
    response = as_user("superuser").post(_file_urls(prepared)["segment audio"])

    assert response.status_code == 405


# --- waveform ---------------------------------------------------------------


def test_waveform_marks_speech_segments(prepared, as_user):
    response = as_user("staff_viewer").get(reverse("audioprep:file-waveform", args=[prepared.german.pk]))
    text = response.content.decode()

    assert response.status_code == 200
    assert response["Content-Type"].startswith("image/svg+xml")
    assert text.startswith("<svg")
    assert "<script" not in text
    assert text.count('class="speech"') == prepared.german.num_segments
    assert "from the decoded source" in text


def test_waveform_falls_back_to_segments(prepared, as_user):
    Path(prepared.german.path).unlink()

    response = as_user("staff_viewer").get(reverse("audioprep:file-waveform", args=[prepared.german.pk]))
    text = response.content.decode()

    assert response.status_code == 200
    assert "from the segment files" in text
    assert text.count('class="speech"') == prepared.german.num_segments


def test_waveform_of_broken_file_renders(prepared, as_user):
    response = as_user("staff_viewer").get(reverse("audioprep:file-waveform", args=[prepared.broken.pk]))

    assert response.status_code == 200
    assert 'class="speech"' not in response.content.decode()


def test_decode_source_stops_at_sample_cap(prepared):
    cap = 16000

    samples, truncated = views.decode_source(prepared.german.path, cap)
    whole, whole_truncated = views.decode_source(prepared.german.path, 10**9)

    assert samples.shape[0] == cap
    assert truncated
    assert not whole_truncated
    assert whole.shape[0] == pytest.approx(prepared.german.duration * 16000, abs=16)


def test_waveform_marks_truncated_picture():
    samples = np.zeros(16000, dtype=np.int16)

    svg = views.render_waveform_svg(samples, [], truncated=True, source="source", duration=3600.0)

    assert "first 1 s of 3600 s shown" in svg


def test_column_extremes_per_column():
    samples = np.array([1, -2, 3, -4, 5, -6, 7, -8], dtype=np.int16)

    minima, maxima = views.column_extremes(samples, 4)
    few_minima, few_maxima = views.column_extremes(samples[:2], 10)

    assert minima.tolist() == [-2, -4, -6, -8]
    assert maxima.tolist() == [1, 3, 5, 7]
    assert few_minima.tolist() == [1, -2]
    assert few_maxima.tolist() == [1, -2]


def test_segments_assembled_on_timeline(prepared):
    german = prepared.german
    segments = list(german.segments.select_related("run"))
    first = segments[0]
    with wave.open(first.path, "rb") as stream:
        expected = np.frombuffer(stream.readframes(stream.getnframes()), dtype="<i2")
    offset = int(round(first.start * 16000))

    timeline, truncated = views.assemble_segments(german, segments, 10**9)

    assert not truncated
    assert timeline.shape[0] == int(round(german.duration * 16000))
    assert np.array_equal(timeline[offset : offset + expected.shape[0]], expected)
    assert not timeline[: max(0, offset - 1)].any()


# --- requeue action ---------------------------------------------------------


def _requeue(client, audio_files):
    return client.post(
        _changelist(AudioFile),
        {"action": "requeue_files", "_selected_action": [str(audio_file.pk) for audio_file in audio_files], "index": "0"},
        follow=True,
    )


def _messages(response) -> list:
    return list(get_messages(response.wsgi_request))


def test_requeue_sets_failed_and_skipped_pending(prepared, as_user):
    AudioFile.objects.filter(pk=prepared.silent.pk).update(status=AudioFile.Status.SKIPPED, reason="size: too large")

    response = _requeue(as_user("staff_editor"), [prepared.broken, prepared.silent, prepared.german])

    broken = AudioFile.objects.get(pk=prepared.broken.pk)
    assert broken.status == "pending"
    assert broken.reason == ""
    assert broken.attempts == 0
    assert AudioFile.objects.get(pk=prepared.silent.pk).status == "pending"
    assert AudioFile.objects.get(pk=prepared.german.pk).status == "done"
    [message] = _messages(response)
    assert message.level == messages.SUCCESS
    assert "Set 2 files back to pending" in message.message
    assert "1 other selected file left unchanged" in message.message


def test_requeue_nothing_eligible_warns(prepared, as_user):
    response = _requeue(as_user("superuser"), [prepared.german, prepared.japanese])

    [message] = _messages(response)
    assert message.level == messages.WARNING
    assert "No file requeued" in message.message
    assert set(AudioFile.objects.filter(pk__in=[prepared.german.pk, prepared.japanese.pk]).values_list("status", flat=True)) == {"done"}


def test_requeue_needs_change_permission(prepared, as_user):
    client = as_user("staff_viewer")

    changelist = client.get(_changelist(AudioFile)).content.decode()
    response = _requeue(client, [prepared.broken])

    assert "requeue_files" not in changelist
    assert AudioFile.objects.get(pk=prepared.broken.pk).status == "failed"
    assert all(message.level != messages.SUCCESS for message in _messages(response))


def test_requeue_offered_to_editor(prepared, as_user):
    changelist = as_user("staff_editor").get(_changelist(AudioFile)).content.decode()

    assert "requeue_files" in changelist
