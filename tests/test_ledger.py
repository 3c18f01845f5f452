"""The ledger: claims, leases, releases, stale recovery, attempts and commits."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audioprep import ledger, runs
from audioprep.models import AudioFile, FileResult, PrepRun, Segment
from audioprep.pipeline.config import PrepConfig
from audioprep.pipeline.process import PrepResult, SegmentRecord

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run(tmp_path):
    return runs.open_run(PrepConfig(), 1, tmp_path)


def make_rows(count: int) -> list[AudioFile]:
    return [AudioFile.objects.create(path=f"/data/{i:03d}.wav") for i in range(count)]


def done_result(audio_file_id: int, num_segments: int = 1) -> PrepResult:
    segments = [SegmentRecord(i, i * 1.0, i * 1.0 + 0.5, f"/out/{audio_file_id}-{i}.wav", -3.0, -20.0) for i in range(num_segments)]
    return PrepResult(audio_file_id, status="done", segments=segments, duration=2.0)


def test_claim_batch_disjoint_between_tokens(run):
    make_rows(5)

    first = ledger.claim_batch(run, "run-a", 3, 60)
    second = ledger.claim_batch(run, "run-b", 3, 60)

    assert len(first) == 3
    assert len(second) == 2
    assert not {claim.audio_file_id for claim in first} & {claim.audio_file_id for claim in second}
    assert ledger.claim_batch(run, "run-c", 3, 60) == []
    assert set(AudioFile.objects.values_list("status", "attempts")) == {("processing", 1)}


def test_release_does_not_count_attempt(run):
    make_rows(2)
    ledger.claim_batch(run, "run-a", 2, 60)

    released = ledger.release("run-a")

    assert released == 2
    assert set(AudioFile.objects.values_list("status", "attempts", "claimed_by")) == {("pending", 0, "")}


def test_release_touches_only_own_claims(run):
    make_rows(2)
    ledger.claim_batch(run, "run-a", 1, 60)
    ledger.claim_batch(run, "run-b", 1, 60)

    assert ledger.release("run-a") == 1
    assert AudioFile.objects.filter(status="processing", claimed_by="run-b").count() == 1


def test_renew_extends_lease(run):
    make_rows(1)
    ledger.claim_batch(run, "run-a", 1, 1)
    before = AudioFile.objects.get().lease_until

    assert ledger.renew_leases("run-a", 600) == 1

    assert AudioFile.objects.get().lease_until > before + timedelta(seconds=500)


def test_recover_stale_takes_back_expired_only(run):
    rows = make_rows(2)
    ledger.claim_batch(run, "dead-run", 2, 600)
    AudioFile.objects.filter(pk=rows[0].pk).update(lease_until=timezone.now() - timedelta(seconds=1))

    requeued, failed = ledger.recover_stale(max_attempts=3)

    assert (requeued, failed) == (1, 0)
    assert AudioFile.objects.get(pk=rows[0].pk).status == "pending"
    assert AudioFile.objects.get(pk=rows[1].pk).status == "processing"


def test_recover_stale_all_claims_spares_own_token(run):
    make_rows(2)
    ledger.claim_batch(run, "dead-run", 1, 600)
    ledger.claim_batch(run, "this-run", 1, 600)

    requeued, _failed = ledger.recover_stale(3, all_claims=True, exclude_token="this-run")

    assert requeued == 1
    assert AudioFile.objects.get(claimed_by="this-run").status == "processing"


def test_recover_stale_fails_after_max_attempts(run):
    make_rows(1)
    for _ in range(3):
        ledger.claim_batch(run, "dead-run", 1, 600)
        ledger.recover_stale(3, all_claims=True)

    audio_file = AudioFile.objects.get()
    assert audio_file.status == "failed"
    assert audio_file.attempts == 3
    assert audio_file.reason.startswith("worker: gave up after 3 attempts")


def test_commit_records_once_per_claim(run):
    (audio_file,) = make_rows(1)
    ledger.claim_batch(run, "run-a", 1, 60)

    first = ledger.commit_results(run, "run-a", [done_result(audio_file.pk, 2)], "hash", 3)
    second = ledger.commit_results(run, "run-a", [done_result(audio_file.pk, 2)], "hash", 3)

    assert [status for _result, status in first] == ["done"]
    assert second == []
    assert Segment.objects.count() == 2
    assert FileResult.objects.count() == 1
    audio_file.refresh_from_db()
    assert (audio_file.status, audio_file.config_hash, audio_file.num_segments) == ("done", "hash", 2)


def test_commit_after_lost_claim_dropped(run):
    (audio_file,) = make_rows(1)
    ledger.claim_batch(run, "run-a", 1, 60)
    ledger.recover_stale(3, all_claims=True)
    ledger.claim_batch(run, "run-b", 1, 60)

    recorded = ledger.commit_results(run, "run-a", [done_result(audio_file.pk)], "hash", 3)

    assert recorded == []
    assert AudioFile.objects.get().claimed_by == "run-b"
    assert not Segment.objects.exists()


def test_recommit_replaces_segments(tmp_path, run):
    (audio_file,) = make_rows(1)
    ledger.claim_batch(run, "run-a", 1, 60)
    ledger.commit_results(run, "run-a", [done_result(audio_file.pk, 3)], "hash", 3)
    second_run = runs.open_run(PrepConfig(), 1, tmp_path)
    AudioFile.objects.update(status="pending")
    ledger.claim_batch(second_run, "run-b", 1, 60)

    ledger.commit_results(second_run, "run-b", [done_result(audio_file.pk, 2)], "hash", 3)

    assert Segment.objects.count() == 2
    assert set(Segment.objects.values_list("run_id", flat=True)) == {second_run.pk}
    assert FileResult.objects.filter(audio_file=audio_file).count() == 2


def test_done_row_not_claimed_again(run):
    (audio_file,) = make_rows(1)
    ledger.claim_batch(run, "run-a", 1, 60)
    ledger.commit_results(run, "run-a", [done_result(audio_file.pk)], "hash", 3)

    assert ledger.claim_batch(run, "run-b", 5, 60) == []


@pytest.mark.parametrize(
    ("reason", "flags", "attempts", "expected"),
    [
        ("worker: pool restarted", [], 1, "pending"),
        ("worker: pool restarted", [], 3, "failed"),
        ("worker: terminated by signal 9 (SIGKILL)", ["worker_died"], 1, "failed"),
        ("db: connection lost", [], 2, "pending"),
        ("decode: moov atom not found", [], 1, "failed"),
    ],
)
def test_transient_failures_retried_until_max(reason, flags, attempts, expected, run):
    (audio_file,) = make_rows(1)
    ledger.claim_batch(run, "run-a", 1, 60)
    AudioFile.objects.update(attempts=attempts)
    result = PrepResult(audio_file.pk, status="failed", reason=reason, flags=flags)

    ((_result, status),) = ledger.commit_results(run, "run-a", [result], "hash", 3)

    assert status == expected
    assert AudioFile.objects.get().status == expected


def test_finalize_counts_add_up(run):
    rows = make_rows(4)
    ledger.claim_batch(run, "run-a", 4, 60)
    ledger.commit_results(run, "run-a", [done_result(rows[0].pk), PrepResult(rows[1].pk, status="no_speech")], "hash", 3)
    ledger.commit_results(run, "run-a", [PrepResult(rows[2].pk, status="failed", reason="decode: bad")], "hash", 3)
    ledger.release("run-a")

    summary = runs.finalize_run(run, PrepRun.Status.INTERRUPTED, "signal: stopped by SIGINT")

    assert (summary.num_done, summary.num_no_speech, summary.num_failed, summary.num_released) == (1, 1, 1, 1)
    assert summary.num_selected == 4


def test_abandoned_runs_closed_live_ones_kept(run, tmp_path):
    long_ago = timezone.now() - timedelta(hours=2)
    other_host_quiet = runs.open_run(PrepConfig(), 1, tmp_path)
    other_host_busy = runs.open_run(PrepConfig(), 1, tmp_path)
    this_host_alive = runs.open_run(PrepConfig(), 1, tmp_path)
    PrepRun.objects.filter(pk__in=[other_host_quiet.pk, other_host_busy.pk]).update(host="elsewhere", started_at=long_ago)
    row = make_rows(1)[0]
    # A run on another host with a claim left is alive, however old.
    AudioFile.objects.filter(pk=row.pk).update(status="processing", last_run=other_host_busy)

    closed = runs.close_abandoned_runs(run, lease_seconds=600)

    assert closed == [other_host_quiet.pk]
    assert PrepRun.objects.get(pk=other_host_quiet.pk).status == "interrupted"
    assert PrepRun.objects.get(pk=other_host_busy.pk).status == "running"
    # open_run records this process's pid, which is alive.
    assert PrepRun.objects.get(pk=this_host_alive.pk).status == "running"
    assert PrepRun.objects.get(pk=run.pk).status == "running"
