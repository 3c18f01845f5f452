"""Failures around the pipeline: dying workers, signals, crashes, concurrency, logs, disks.

Every test runs the real commands, most of them as subprocesses so that
signals and process trees are real. Each subprocess and wait has a hard
timeout, and no test asserts how long something took.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path

import psutil
import pytest
from django.core.management import call_command
from django.db import connection

from audioprep import service
from audioprep.models import AudioFile, FileResult, PrepRun, Segment
from audioprep.pipeline import errors
from audioprep.demo.files import encode
from audioprep.demo.synth import speech_signal
from audioprep.pipeline.config import PrepConfig
from audioprep.pipeline.decode_helper import HelperDiedError
from audioprep.pipeline.process import PrepResult, PrepTask, SegmentRecord, process_audio_sync, segment_path
from audioprep.prepare_audio import PrepareAudio, RunStartError, usable_cpus
from audioprep.runs import EXIT_FILES_FAILED, EXIT_NOT_STARTED, EXIT_SIGINT, EXIT_SIGTERM
from tests.conftest import REPO_ROOT, database_url
from tests.test_badinput import (
    check_baseline,
    copy_inputs,
    files_of,
    import_audio,
    prepare,
    read_manifest,
    row,
    segment_files,
)

pytestmark = pytest.mark.django_db(transaction=True)

COMMAND_TIMEOUT = 240
SHORT_LAYOUT = [("silence", 0.3), ("speech", 0.8), ("silence", 0.4)]
# A line of loguru's default stderr format: "2024-01-01 10:00:00.000 | INFO     | module:function:12 - message".
LOGURU_DEFAULT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \| \w+ +\| [\w.]+:[\w<>]+:\d+ - ")
RUN_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| \w+ +\| run=\d+( file=\d+)? pid=\d+ \| ")


class WatchedCommand:
    """A manage.py subprocess in its own session whose process tree is recorded while it runs."""

    def __init__(self, tmp_path: Path, *args: str, env: dict | None = None, output_dir: Path | None = None) -> None:
        self.stdout_path = tmp_path / f"stdout-{time.monotonic_ns()}.txt"
        self.stderr_path = tmp_path / f"stderr-{time.monotonic_ns()}.txt"
        child_env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1", **(env or {})}
        if output_dir is not None:
            child_env["AUDIOPREP_OUTPUT_DIR"] = str(output_dir)
        self._stdout = open(self.stdout_path, "w")
        self._stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "manage.py"), *args],
            cwd=REPO_ROOT, env=child_env, stdout=self._stdout, stderr=self._stderr, start_new_session=True,
        )
        self.seen: dict[int, tuple[float, list[str]]] = {}

    def watch(self, seconds: float) -> None:
        """Record the child's descendants for `seconds` (or until it exits)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                for child in psutil.Process(self.process.pid).children(recursive=True):
                    self.seen.setdefault(child.pid, (child.create_time(), child.cmdline()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    def watch_until(self, condition, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None and not condition():
            self.watch(0.1)

    def wait(self, timeout: float = COMMAND_TIMEOUT) -> int:
        try:
            self.watch(timeout)
            self.process.wait(timeout=5)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=30)
            self._stdout.close()
            self._stderr.close()
        return self.process.returncode

    def send(self, signum: int, group: bool = False) -> None:
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def survivors(self, grace: float = 10) -> list[str]:
        """Return descriptions of recorded descendants still alive after `grace` seconds.

        Ending takes a moment after the command itself has ended: the kernel
        kills a worker when its parent dies, and the multiprocessing resource
        tracker exits once its pipe closes.
        """
        deadline = time.monotonic() + grace
        alive = []
        for pid, (created, cmdline) in self.seen.items():
            while not _ended(pid, created):
                if time.monotonic() >= deadline:
                    alive.append(f"{pid} {' '.join(cmdline)}")
                    break
                time.sleep(0.05)
        return alive


def _ended(pid: int, created: float) -> bool:
    """Return whether the process `pid` started at `created` has exited (a zombie counts)."""
    try:
        process = psutil.Process(pid)
        return process.create_time() != created or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def short_inputs(make_wav, tmp_path: Path, count: int, prefix: str = "f") -> list[Path]:
    """Write one short speech WAV and hard-link it under `count` names."""
    original = make_wav("original.wav", layout=SHORT_LAYOUT)
    folder = tmp_path / "inputs"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i + 1:03d}.wav"
        os.link(original, path)
        paths.append(path)
    return paths


def terminal_rows(statuses=("done", "no_speech", "failed", "skipped")):
    return AudioFile.objects.filter(status__in=statuses)


# -- worker death ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("kill", "worker: terminated by signal 9 (SIGKILL) (possibly out of memory)"),
        ("abort", "worker: terminated by signal 6 (SIGABRT)"),
        # A worker killed while it sends a log record leaves the queue's
        # write lock taken. The workers of the next pool must not wait on it.
        ("kill_mid_log", "worker: terminated by signal 9 (SIGKILL) (possibly out of memory)"),
    ],
)
def test_worker_death_fails_only_its_file(action, reason, make_wav, tmp_path, output_dir):
    paths = short_inputs(make_wav, tmp_path, 12)
    import_audio(*paths)

    command = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "3", output_dir=output_dir,
                             env={"AUDIOPREP_TEST_HOOK": f"sleep=0.3,{action}=f003.wav"})
    returncode = command.wait()

    assert returncode == EXIT_FILES_FAILED, command.stderr
    culprit = row(paths[2])
    assert culprit.status == "failed"
    assert culprit.reason == reason
    for path in paths[:2] + paths[3:]:
        assert row(path).status == "done", f"{path.name}: {row(path).reason}"
    run = PrepRun.objects.get()
    assert run.status == "completed_with_errors"
    assert (run.num_done, run.num_failed) == (11, 1)
    assert "rebuilding the pool (1 of at most" in Path(run.log_path).read_text(encoding="utf-8")
    assert command.survivors() == []
    check_baseline(output_dir)


def test_batch_worker_death_fails_one_file(make_wav, tmp_path, output_dir):
    # Short files go to the pool in batches. A death in the middle of a
    # batch fails its own file and hands the rest of the batch back.
    paths = short_inputs(make_wav, tmp_path, 80)
    import_audio(*paths)

    command = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "2", "--verbosity", "3", output_dir=output_dir,
                             env={"AUDIOPREP_TEST_HOOK": "kill=f060.wav"})
    returncode = command.wait()

    assert returncode == EXIT_FILES_FAILED, command.stderr
    culprit = row(paths[59])
    assert culprit.status == "failed"
    assert culprit.reason == "worker: terminated by signal 9 (SIGKILL) (possibly out of memory)"
    for path in paths[:59] + paths[60:]:
        assert row(path).status == "done", f"{path.name}: {row(path).reason}"
    run = PrepRun.objects.get()
    assert (run.num_done, run.num_failed) == (79, 1)
    log_text = Path(run.log_path).read_text(encoding="utf-8")
    assert "files sent to the pool as one batch" in log_text
    assert command.survivors() == []
    check_baseline(output_dir)


def test_repeated_worker_deaths_abort_run(make_wav, tmp_path, output_dir):
    paths = short_inputs(make_wav, tmp_path, 8)
    import_audio(*paths)

    command = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "1", output_dir=output_dir,
                             env={"AUDIOPREP_TEST_HOOK": "kill=.wav"})
    returncode = command.wait()

    assert returncode == EXIT_NOT_STARTED, command.stderr
    run = PrepRun.objects.get()
    assert run.status == "aborted"
    assert run.reason.startswith("worker: worker processes died 6 times")
    assert not AudioFile.objects.filter(status="processing").exists()
    assert AudioFile.objects.filter(status="failed").count() == 6, command.stderr
    assert set(AudioFile.objects.exclude(status="failed").values_list("status", flat=True)) <= {"pending"}
    assert run.num_selected == run.num_failed + run.num_released
    assert command.survivors() == []
    check_baseline(output_dir, terminal_rows())


class _LateExitCode:
    """A dead worker reaped by another thread that stores its exit code a moment later.

    Until then join() returns at once and exitcode is None, as with a real
    process whose waitpid() the executor's thread has just done. The timing
    cannot be produced on demand with a real pool, so this class replaces it.
    """

    def __init__(self, delay: float, exitcode: int) -> None:
        self.exitcode = None
        self._timer = threading.Timer(delay, setattr, (self, "exitcode", exitcode))
        self._timer.start()

    def join(self, timeout: float | None = None) -> None:
        return None


def test_exit_code_stored_late_still_found():
    process = _LateExitCode(0.3, -signal.SIGKILL)

    dead = PrepareAudio._dead_workers(executor=None, seen={4242: process})

    assert dead == {4242: -signal.SIGKILL}


def long_speech_mp3(path: Path, minutes: float) -> Path:
    """Write a stereo 44.1 kHz MP3 of speech and pauses lasting about `minutes`."""
    layout = [("silence", 0.6), ("speech", 2.5), ("silence", 0.9), ("speech", 1.8)]
    repeats = max(1, round(minutes * 60 / 5.8))
    encode(path, speech_signal(layout * repeats, sample_rate=44100, seed=9), 44100, 2, "mp3", "libmp3lame")
    return path


@pytest.mark.skipif(usable_cpus() < 2, reason="a decoder helper starts only when a core is idle, and this machine has one")
def test_helper_decoded_file_same_output(tmp_path, output_dir, settings):
    import_audio(long_speech_mp3(tmp_path / "talk.mp3", 1.0))
    alone_dir = tmp_path / "alone"
    settings.AUDIOPREP = {**settings.AUDIOPREP, "DECODE_HELPER_MIN_SECONDS": 0}
    prepare("--num_workers", "1", "--output_dir", str(alone_dir))
    alone = _tree(alone_dir)
    _reset_rows()

    settings.AUDIOPREP = {**settings.AUDIOPREP, "DECODE_HELPER_MIN_SECONDS": 1}
    prepare("--num_workers", "1", "--output_dir", str(output_dir), verbosity=3)

    run = PrepRun.objects.latest("pk")
    assert "decoded by a helper process: mp3" in Path(run.log_path).read_text(encoding="utf-8")
    assert len(alone) > 5
    assert _tree(output_dir) == alone


@pytest.mark.skipif(usable_cpus() < 2, reason="a decoder helper starts only when a core is idle, and this machine has one")
def test_killed_helper_file_retried(tmp_path, output_dir):
    path = long_speech_mp3(tmp_path / "talk.mp3", 4.0)
    import_audio(path)

    # The helper waits 2 s before it decodes, so the loop below finds it
    # however fast the machine decodes the file.
    command = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "1", "--verbosity", "3", output_dir=output_dir,
                             env={"AUDIOPREP_DECODE_HELPER_MIN_SECONDS": "1", "AUDIOPREP_TEST_HOOK": "helper_pause=2"})
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and command.process.poll() is None:
        command.watch(0.05)
        for pid, (_created, cmdline) in command.seen.items():
            if "audioprep.pipeline.decode_helper" in cmdline:
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
    returncode = command.wait()

    assert killed is not None, command.stderr
    assert returncode == 0, command.stderr
    audio_file = row(path)
    assert audio_file.status == "done"
    assert audio_file.attempts == 2
    log_text = Path(PrepRun.objects.get().log_path).read_text(encoding="utf-8")
    assert "worker: decoder helper process terminated by signal 9 (SIGKILL) before the end of the file" in log_text
    assert command.survivors() == []
    check_baseline(output_dir)


# -- the process boundary ---------------------------------------------------------------------


def _exception_classes():
    classes = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, Exception)]
    return classes + [RunStartError, service.PrepareUsageError, HelperDiedError]


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda cls: cls.__name__)
def test_exception_survives_pickling(cls):
    original = cls("decode: something went wrong in file 'a b.wav'")

    copy = pickle.loads(pickle.dumps(original))

    assert type(copy) is cls
    assert str(copy) == str(original)


def test_result_record_small_and_plain(make_wav, tmp_path):
    path = make_wav("a.wav")
    task = PrepTask(1, str(path), str(tmp_path / "out"), PrepConfig())

    result = process_audio_sync(task)

    payload = pickle.dumps(result)
    assert result.status == "done"
    assert len(payload) < 64 * 1024
    assert all(isinstance(segment, SegmentRecord) for segment in result.segments)
    assert pickle.loads(payload) == result


def test_mixed_bad_files_finish(badinput_dir, tmp_path, run_manage, output_dir):
    names = {
        "BI-05": ["picture_named.mp3", "headerless_s16le_16k_mono.pcm"],
        "BI-03": ["float64_16k.wav"],
        "BI-04": ["odd_byte_count_16bit.wav"],
        "BI-02": ["truncated_no_moov.m4a"],
        "BI-01": ["speech_ok.wav"],
    }
    paths = []
    for case, case_names in names.items():
        folder = copy_inputs(badinput_dir, tmp_path, case, case_names)
        paths += [folder / name for name in case_names]
    import_audio(*paths)

    completed = run_manage("prepare_audio", "--num_workers", "2", timeout=60)

    assert completed.returncode == EXIT_FILES_FAILED, completed.stderr
    assert "BrokenProcessPool" not in completed.stderr
    expected = {
        "picture_named.mp3": "failed", "headerless_s16le_16k_mono.pcm": "failed", "float64_16k.wav": "done",
        "odd_byte_count_16bit.wav": "done", "truncated_no_moov.m4a": "failed", "speech_ok.wav": "done",
    }
    for path in paths:
        assert row(path).status == expected[path.name], f"{path.name}: {row(path).reason}"
        if expected[path.name] == "failed":
            assert row(path).reason.split(":")[0] in ("decode", "empty", "io")
    check_baseline(output_dir)


# -- signals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signals", "to_group", "exit_status"),
    [
        ([signal.SIGINT], True, EXIT_SIGINT),
        ([signal.SIGTERM], False, EXIT_SIGTERM),
        ([signal.SIGINT, signal.SIGINT], True, EXIT_SIGINT),
    ],
    ids=["sigint-to-group", "sigterm-to-parent", "double-sigint"],
)
def test_signal_stops_run_cleanly(signals, to_group, exit_status, make_wav, tmp_path, output_dir):
    paths = short_inputs(make_wav, tmp_path, 30)
    import_audio(*paths)

    command = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "4", output_dir=output_dir,
                             env={"AUDIOPREP_TEST_HOOK": "sleep=1"})
    command.watch_until(lambda: PrepRun.objects.exists())
    command.watch(3)
    for i, signum in enumerate(signals):
        if i:
            command.watch(0.5)
        command.send(signum, group=to_group)
    returncode = command.wait(timeout=60)

    assert returncode == exit_status, command.stderr
    run = PrepRun.objects.get()
    assert run.status == "interrupted"
    assert run.reason == f"signal: stopped by {signals[0].name}"
    assert not AudioFile.objects.filter(status="processing").exists()
    assert set(AudioFile.objects.values_list("status", flat=True)) <= {"done", "pending"}
    assert AudioFile.objects.filter(status="pending").exists()
    assert not AudioFile.objects.filter(status="failed").exists()
    assert run.num_selected == run.num_done + run.num_released
    assert command.survivors() == []
    assert not [path for path in (output_dir / "segments").rglob(".*")]
    for audio_file in AudioFile.objects.filter(status="pending"):
        assert files_of(output_dir, audio_file.pk) == [], audio_file.path
    log_text = Path(run.log_path).read_text(encoding="utf-8")
    assert f"run {run.pk} interrupted" in log_text

    prepare("--num_workers", "4")

    assert set(AudioFile.objects.values_list("status", flat=True)) == {"done"}
    assert FileResult.objects.filter(status="done").count() == 30
    check_baseline(output_dir)


def test_hard_stop_removes_partial_segments(tmp_path, output_dir):
    path = long_speech_mp3(tmp_path / "talk.mp3", 8.0)
    import_audio(path)

    command = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "1", output_dir=output_dir,
                             env={"AUDIOPREP_DECODE_HELPER_MIN_SECONDS": "0"})
    # Segments are written as they close, long before the file ends.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and command.process.poll() is None and not segment_files(output_dir):
        command.watch(0.02)
    written = len(segment_files(output_dir))
    command.send(signal.SIGINT)
    time.sleep(0.05)
    command.send(signal.SIGINT)
    returncode = command.wait(timeout=60)

    assert written > 0, command.stderr
    assert returncode == EXIT_SIGINT, command.stderr
    assert row(path).status == "pending"
    assert segment_files(output_dir) == []
    assert command.survivors() == []


def test_interrupt_in_process_has_no_sync_only_errors(make_wav, tmp_path, output_dir, settings, monkeypatch):
    monkeypatch.delenv("DJANGO_ALLOW_ASYNC_UNSAFE", raising=False)
    paths = short_inputs(make_wav, tmp_path, 12)
    import_audio(*paths)
    settings.AUDIOPREP = {**settings.AUDIOPREP, "TEST_HOOK": "sleep=1"}
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))

    timer.start()
    try:
        prepare("--num_workers", "2", verbosity=3)
    finally:
        timer.cancel()

    run = PrepRun.objects.get()
    assert run.status == "interrupted"
    assert not AudioFile.objects.filter(status="processing").exists()
    assert "SynchronousOnlyOperation" not in Path(run.log_path).read_text(encoding="utf-8")


def test_every_status_path_has_no_sync_only_errors(make_wav, tmp_path, output_dir, monkeypatch):
    monkeypatch.delenv("DJANGO_ALLOW_ASYNC_UNSAFE", raising=False)
    done = make_wav("speech.wav")
    quiet = make_wav("quiet.wav", layout=[("silence", 2.0)])
    broken = tmp_path / "audio" / "broken.wav"
    broken.write_text("not audio")
    import_audio(done, quiet, broken)

    prepare("--num_workers", "2", verbosity=3)

    assert row(done).status == "done"
    assert row(quiet).status == "no_speech"
    assert row(broken).status == "failed"
    run = PrepRun.objects.get()
    assert run.status == "completed_with_errors"
    assert "SynchronousOnlyOperation" not in Path(run.log_path).read_text(encoding="utf-8")
    check_baseline(output_dir)


# -- logs from worker processes ----------------------------------------------------------------


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_lines_reach_run_log_once(start_method, make_wav, tmp_path, output_dir):
    paths = short_inputs(make_wav, tmp_path, 200)
    import_audio(*paths)

    command = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "4", "--verbosity", "3", output_dir=output_dir,
                             env={"AUDIOPREP_START_METHOD": start_method})
    returncode = command.wait()

    assert returncode == 0, command.stderr
    run = PrepRun.objects.get()
    assert run.log_path
    lines = Path(run.log_path).read_text(encoding="utf-8").splitlines()
    for line in lines:
        assert RUN_LOG_LINE.match(line), f"unparsable run log line: {line!r}"
    text = "\n".join(lines)
    for audio_file in AudioFile.objects.all():
        assert text.count(f"| file {audio_file.pk} done: ") == 1, audio_file.pk
        assert text.count(f"| file {audio_file.pk} decoded: ") == 1, audio_file.pk
    for line in command.stderr.splitlines():
        assert not LOGURU_DEFAULT_LINE.match(line), f"worker line on stderr: {line!r}"
    assert "decoded: " not in command.stderr or command.stderr.count("decoded: ") == 200


# -- database -------------------------------------------------------------------------------------


def _writer_script(stop_file: Path, row_id: int) -> str:
    """Django shell code that updates one row every 50 ms, holding each transaction 200 ms."""
    return (
        "import time, pathlib\n"
        "from django.db import transaction\n"
        "from audioprep.models import AudioFile\n"
        f"stop = pathlib.Path({str(stop_file)!r})\n"
        "deadline = time.monotonic() + 30\n"
        "count = 0\n"
        "while not stop.exists() and time.monotonic() < deadline:\n"
        "    with transaction.atomic():\n"
        f"        AudioFile.objects.filter(pk={row_id}).update(reason=f'skipped: writer update {{count}}')\n"
        "        time.sleep(0.2)\n"
        "    count += 1\n"
        "    time.sleep(0.05)\n"
        "print('updates', count)\n"
    )


def test_concurrent_runs_prepare_each_file_once(make_wav, tmp_path, output_dir):
    paths = short_inputs(make_wav, tmp_path, 200)
    import_audio(*paths)
    unrelated = AudioFile.objects.create(path=str(tmp_path / "unrelated.wav"), status="skipped", reason="skipped: not audio")
    stop_file = tmp_path / "stop-writer"
    writer = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "manage.py"), "shell", "-c", _writer_script(stop_file, unrelated.pk)],
        cwd=REPO_ROOT, env={**os.environ, "DATABASE_URL": database_url()},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "2", output_dir=output_dir)
        second = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "2", output_dir=output_dir)
        returncodes = [first.wait(), second.wait()]
    finally:
        stop_file.touch()
        writer_out, writer_err = writer.communicate(timeout=60)

    for command in (first, second):
        assert "database is locked" not in command.stderr
        assert "Traceback" not in command.stderr
    assert returncodes == [0, 0], first.stderr + second.stderr
    assert writer.returncode == 0, writer_err
    assert "updates" in writer_out
    assert AudioFile.objects.filter(status="done").count() == 200
    for audio_file in AudioFile.objects.exclude(pk=unrelated.pk):
        assert FileResult.objects.filter(audio_file=audio_file).count() == 1, audio_file.path
    assert Segment.objects.count() == 200
    assert len(set(Segment.objects.values_list("path", flat=True))) == 200
    assert len(segment_files(output_dir)) == 200
    runs = list(PrepRun.objects.all())
    assert len(runs) == 2
    assert sum(run.num_done for run in runs) == 200
    for run in runs:
        assert run.status == "completed"
        assert "database is locked" not in Path(run.log_path).read_text(encoding="utf-8")
    assert not AudioFile.objects.filter(reason__contains="locked").exclude(pk=unrelated.pk).exists()
    check_baseline(output_dir, AudioFile.objects.exclude(pk=unrelated.pk))


def _server_connections() -> int:
    """Count server backends on the test database other than this test's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_run_holds_at_most_two_connections(start_method, make_wav, tmp_path, output_dir):
    if connection.vendor != "postgresql":
        pytest.skip("counts PostgreSQL server connections")
    paths = short_inputs(make_wav, tmp_path, 40)
    import_audio(*paths)

    command = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "4", output_dir=output_dir,
                             env={"AUDIOPREP_START_METHOD": start_method, "AUDIOPREP_TEST_HOOK": "sleep=0.1", "CONN_MAX_AGE": "60"})
    counts = []
    while command.process.poll() is None and len(counts) < 2000:
        counts.append(_server_connections())
        command.watch(0.05)
    returncode = command.wait()

    assert returncode == 0, command.stderr
    assert max(counts) <= 2, counts
    assert set(AudioFile.objects.values_list("status", flat=True)) == {"done"}


_REPEATED_RUNS_SCRIPT = """
from io import StringIO
from django.core.management import call_command
from audioprep.models import AudioFile
for number in range(5):
    AudioFile.objects.update(status="pending", attempts=0)
    call_command("prepare_audio", "--num_workers", "4", stdout=StringIO(), stderr=StringIO())
    statuses = sorted(set(AudioFile.objects.values_list("status", flat=True)))
    print("run", number, statuses, AudioFile.objects.count())
"""


def test_repeated_runs_in_one_process_keep_connection(make_wav, tmp_path, output_dir):
    paths = short_inputs(make_wav, tmp_path, 8)
    import_audio(*paths)

    command = WatchedCommand(tmp_path, "shell", "-c", _REPEATED_RUNS_SCRIPT, output_dir=output_dir,
                             env={"AUDIOPREP_START_METHOD": "fork", "CONN_MAX_AGE": "60"})
    returncode = command.wait()

    assert returncode == 0, command.stderr
    for number in range(5):
        assert f"run {number} ['done'] 8" in command.stdout
    assert list(PrepRun.objects.values_list("status", flat=True)) == ["completed"] * 5


# -- crash of the whole command -----------------------------------------------------------------


def _tree(output_dir: Path) -> dict[str, bytes]:
    """Map segment files and manifest (output folder written as OUT) to their bytes."""
    tree = {str(path.relative_to(output_dir)): path.read_bytes() for path in segment_files(output_dir)}
    tree["manifest.jsonl"] = (output_dir / "manifest.jsonl").read_bytes().replace(str(output_dir).encode(), b"OUT")
    return tree


def _reset_rows() -> None:
    Segment.objects.all().delete()
    AudioFile.objects.update(status="pending", attempts=0, claimed_by="", lease_until=None, num_segments=0)


def test_killed_command_recovers_to_same_output(make_wav, tmp_path, output_dir, settings):
    paths = [make_wav(f"rec{i:02d}.wav", seed=i) for i in range(16)]
    import_audio(*paths)
    reference_dir = tmp_path / "reference"
    prepare("--num_workers", "2", "--output_dir", str(reference_dir))
    reference = _tree(reference_dir)
    assert len(reference) == 33

    for trial, results_before_kill in enumerate([0, 5, 12]):
        _reset_rows()
        trial_dir = tmp_path / f"trial{trial}"
        command = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "2", "--output_dir", str(trial_dir),
                                 env={"AUDIOPREP_TEST_HOOK": "sleep=0.3"})
        latest = PrepRun.objects.count() + 1
        command.watch_until(lambda: AudioFile.objects.filter(status="processing").exists()
                            and FileResult.objects.filter(run__pk__gte=latest).count() >= results_before_kill)
        command.send(signal.SIGKILL)
        command.wait(timeout=60)
        assert command.survivors() == []
        assert AudioFile.objects.filter(status="processing").exists()
        killed_pk = PrepRun.objects.get(status="running").pk
        if trial == 0:
            # Without --recover_stale the claimed files wait for their leases, and the run log explains why.
            prepare("--num_workers", "2", "--output_dir", str(trial_dir))
            plain = PrepRun.objects.order_by("-pk").first()
            assert AudioFile.objects.filter(status="processing").exists()
            assert f"claimed by run {killed_pk}, whose process" in Path(plain.log_path).read_text(encoding="utf-8")
            stale = AudioFile.objects.filter(status="processing").count()
            assert f"would prepare {stale} of {stale} pending or stale file" in prepare("--dry-run", "--recover_stale")

        prepare("--num_workers", "2", "--recover_stale", "--output_dir", str(trial_dir))

        killed = PrepRun.objects.get(pk=killed_pk)
        assert killed.status == "interrupted"
        assert killed.finished_at is not None
        assert killed.num_done == FileResult.objects.filter(run=killed, status="done").count()
        assert killed.num_selected == killed.num_done + killed.num_no_speech + killed.num_failed + killed.num_skipped + killed.num_released
        assert killed.num_released > 0
        assert set(AudioFile.objects.values_list("status", flat=True)) == {"done"}
        assert _tree(trial_dir) == reference, f"trial {trial}"
        lines = (trial_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(set(lines)) == 32
        assert Segment.objects.count() == 32
        check_baseline(trial_dir)


# -- output safety ------------------------------------------------------------------------------


def test_output_path_is_a_file_not_started(make_wav, tmp_path, run_manage):
    import_audio(make_wav("a.wav"))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")

    completed = run_manage("prepare_audio", "--output_dir", str(blocker))

    assert completed.returncode == EXIT_NOT_STARTED
    assert "could not start" in completed.stderr
    assert "is not writable" in completed.stderr
    assert "--output_dir" in completed.stderr
    assert AudioFile.objects.get().status == "pending"
    assert not PrepRun.objects.exists()


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30)


def test_full_disk_fails_file_with_output_reason(make_wav, tmp_path, small_disk):
    paths = [make_wav(f"long{i}.wav", layout=[("silence", 0.5), ("speech", 6.0), ("silence", 0.5)], seed=i) for i in range(6)]
    import_audio(*paths)

    out = prepare("--num_workers", "1", "--output_dir", str(small_disk / "out"))

    failed = AudioFile.objects.filter(status="failed")
    assert failed.exists(), out
    for audio_file in failed:
        assert audio_file.reason.startswith("output: no space left on device"), audio_file.reason
        assert files_of(small_disk / "out", audio_file.pk) == []
    assert not AudioFile.objects.filter(status="processing").exists()
    assert not [path for path in segment_files(small_disk / "out") if path.name.startswith(".")]


@pytest.mark.parametrize(
    "source",
    [
        "../../etc/passwd.wav",
        "/data/..wav",
        "/data/a/../../b/..\\..\\evil.wav",
        "/data/" + "ü" * 200 + ".wav",
        "/data/" + "会議" * 60 + ".wav",
        "/data/Interview.WAV",
        "/data/\x00weird\nname.wav",
        "",
    ],
)
def test_segment_names_stay_inside_output(source, tmp_path):
    output = tmp_path / "out"

    path = segment_path(output, 123, source, 7)

    assert path.resolve().is_relative_to(output.resolve())
    assert len(path.name.encode("utf-8")) <= 255
    assert path.name == path.name.lower()
    assert path.name.startswith("00000123-")
    assert path.name.endswith("-0007.wav")
    assert re.fullmatch(r"[a-z0-9.-]+", path.name)


# -- secrets ------------------------------------------------------------------------------------


def test_secrets_never_logged(make_wav, tmp_path, output_dir):
    secret_key = "audioprep-test-secret-4b1d2c0e9f"
    url = database_url()
    password = "pw-7d3a9e"
    if connection.vendor == "postgresql":
        # The local server trusts connections, so it accepts any password.
        url = url.replace("postgres://postgres@", f"postgres://postgres:{password}@")
    paths = [make_wav("a.wav"), make_wav("b.wav", seed=2)]
    broken = tmp_path / "audio" / "broken.wav"
    broken.write_text("not audio")
    import_audio(*paths, broken)

    command = WatchedCommand(tmp_path, "prepare_audio", "--num_workers", "2", "--verbosity", "3", output_dir=output_dir,
                             env={"SECRET_KEY": secret_key, "DATABASE_URL": url})
    returncode = command.wait()

    assert returncode == EXIT_FILES_FAILED, command.stderr
    run = PrepRun.objects.get()
    texts = {
        "run log": Path(run.log_path).read_text(encoding="utf-8"),
        "stdout": command.stdout,
        "stderr": command.stderr,
        "run record": json.dumps(run.config) + run.reason + run.output_dir,
        "reasons": " ".join(AudioFile.objects.values_list("reason", flat=True)),
    }
    for name, text in texts.items():
        assert secret_key not in text, name
        assert url not in text, name
        assert password not in text, name
