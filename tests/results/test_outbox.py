"""The outbox on both database backends: durable rows before sending, the UID ledger, claiming, replay, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

from dicom_agent.db.orm import Export, ResultObject, utcnow
from dicom_agent.db.session import session_factory, session_scope
from dicom_agent.db.states import ExportState
from dicom_agent.encode import encode_study
from dicom_agent.export import outbox
from dicom_agent.export.destinations import Destination
from dicom_agent.export.runner import recover_interrupted
from dicom_agent.export.scu import CONTEXT_NOT_ACCEPTED, Peer, SendResult
from dicom_agent.export.sender import RetryPolicy, claim, classify, due_ids
from dicom_agent.store.atomic import resolve_inside
from tests.results import findings as F
from tests.results import sources as S
from tests.results.outbox_helpers import add_study, export_rows, fast_settings, publish_ct

REPO = Path(__file__).resolve().parents[2]


def test_publish_stores_files_and_rows_per_profile(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    publish_ct(
        settings, ["PACS@127.0.0.1:104", "RIS@127.0.0.1:105?profile=sr-only", "OLD@127.0.0.1:106?profile=key-images"]
    )
    rows = export_rows(database_url)
    by_dest: dict[str, list[str]] = {}
    for _, kind, dest, state, attempts, _ in rows:
        by_dest.setdefault(dest, []).append(kind)
        assert state == "pending" and attempts == 0
    assert sorted(by_dest["PACS@127.0.0.1:104"]) == ["kos", "seg", "sr"]
    assert by_dest["RIS@127.0.0.1:105"] == ["sr"]
    assert by_dest["OLD@127.0.0.1:106"] == ["sc"]
    with session_scope(database_url) as s:
        objects = s.scalars(select(ResultObject)).all()
        assert sorted(o.kind for o in objects) == ["kos", "sc", "seg", "sr"]  # the SR is stored once for two profiles
        for obj in objects:
            path = resolve_inside(settings.storage_dir, obj.path)
            assert obj.path.startswith("results/") and path.stat().st_size == obj.size_bytes
            import hashlib

            assert hashlib.sha256(path.read_bytes()).hexdigest() == obj.sha256


def test_same_uid_twice_is_the_same_row(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    publish_ct(settings, ["PACS@127.0.0.1:104"])
    before = export_rows(database_url)
    sources = S.ct_series()
    with session_scope(database_url) as s:
        study_id = s.scalar(select(ResultObject.study_id))
        assert study_id is not None
        outbox.enqueue(
            s,
            settings.storage_dir,
            encode_study(F.ct_findings(sources), sources),
            ["PACS@127.0.0.1:104"],
            study_id=study_id,
        )
    assert export_rows(database_url) == before


def test_same_uid_with_other_bytes_is_refused(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    sources = S.ct_series()
    study_id = add_study(database_url, sources)
    first = encode_study(F.ct_findings(sources), sources)[0]
    changed = encode_study(F.ct_findings(sources, probability=0.5), sources)[0]  # same revision: a bug upstream
    assert first.sop_instance_uid == changed.sop_instance_uid
    with session_scope(database_url) as s:
        outbox.store_object(s, settings.storage_dir, first, study_id, None)
    with pytest.raises(outbox.LedgerConflictError), session_scope(database_url) as s:
        outbox.store_object(s, settings.storage_dir, changed, study_id, None)
    with session_scope(database_url) as s:
        assert s.scalar(select(ResultObject.sha256)) == first.sha256()


def test_claim_is_won_once(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    publish_ct(settings, ["PACS@127.0.0.1:104"])
    factory = session_factory(database_url)
    ids = due_ids(factory, utcnow())
    assert len(ids) == 3
    first = claim(factory, ids, utcnow())
    second = claim(factory, ids, utcnow())
    assert first == ids and second == []
    assert due_ids(factory, utcnow()) == []
    assert recover_interrupted(factory) == 3  # a restart resumes rows left in 'sending'
    assert claim(factory, ids, utcnow()) == ids


def test_rows_not_yet_due_are_not_claimed(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    publish_ct(settings, ["PACS@127.0.0.1:104"])
    from datetime import timedelta

    with session_scope(database_url) as s:
        s.execute(update(Export).values(next_try_at=utcnow() + timedelta(hours=1)))
    factory = session_factory(database_url)
    assert due_ids(factory, utcnow()) == []
    assert claim(factory, [r[0] for r in export_rows(database_url)], utcnow()) == []


def test_replay_dead_and_by_id(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    publish_ct(settings, ["PACS@127.0.0.1:104"])
    ids = [r[0] for r in export_rows(database_url)]
    with session_scope(database_url) as s:
        s.execute(update(Export).values(state=ExportState.DEAD, attempts=3, last_error="x"))
    with session_scope(database_url) as s:
        assert outbox.replay(s, [ids[0]]) == [ids[0]]
    with session_scope(database_url) as s:
        assert sorted(outbox.replay(s, dead=True)) == ids[1:]
    assert all(r[3] == "pending" and r[4] == 0 for r in export_rows(database_url))


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=10.0, max_attempts=8)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 10.0), (8, 10.0)]:
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (0x0000, None, "done"),
        (0xB000, None, "done"),
        (0xA700, None, "transient"),
        (0x0110, None, "transient"),
        (0xA900, None, "permanent"),
        (0xC000, None, "permanent"),
        (0x0122, None, "permanent"),
        (None, CONTEXT_NOT_ACCEPTED, "permanent"),
        (None, "association lost", "transient"),
        (None, "no response", "transient"),
    ],
)
def test_status_classification(status: int | None, error: str | None, kind: str) -> None:
    assert classify(SendResult(Path("x"), "1.2", status, error)) == kind


def test_destination_parsing() -> None:
    d = Destination.parse("PACS@10.0.0.5:104?profile=key-images+gsps")
    assert (d.peer.ae_title, d.peer.host, d.peer.port, d.profile, d.address) == (
        "PACS", "10.0.0.5", 104, "key-images+gsps", "PACS@10.0.0.5:104",
    )  # fmt: skip
    assert Destination.parse("PACS@h:1").profile == "full"
    assert str(Peer.parse("PACS@h:1?profile=sr-only")) == "PACS@h:1"  # other users of DESTINATIONS keep working
    for bad in ("PACS@h:1?profile=pdf", "PACS@h:1?colour=red", "nohost"):
        with pytest.raises(ValueError):
            Destination.parse(bad)


def test_cli_lists_and_retries(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    publish_ct(settings, ["PACS@127.0.0.1:104"])
    ids = [r[0] for r in export_rows(database_url)]
    with session_scope(database_url) as s:
        s.execute(
            update(Export).where(Export.id == ids[0]).values(state=ExportState.DEAD, last_error="C-STORE status 0xA900")
        )
    env = {**os.environ}
    listing = subprocess.run(
        [sys.executable, "-m", "dicom_agent", "exports"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "kind", "destination", "state"]
    assert any(line.split()[0] == str(ids[0]) and "dead" in line and "0xA900" in line for line in lines[1:])
    retry = subprocess.run(
        [sys.executable, "-m", "dicom_agent", "exports", "retry", "--dead"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert retry.returncode == 0 and "replayed 1" in retry.stdout, retry.stderr
    assert export_rows(database_url)[0][3] == "pending"
    bad = subprocess.run(
        [sys.executable, "-m", "dicom_agent", "exports", "retry", "99999"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "99999" in bad.stderr


def test_persist_results_for_a_job(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's call: one transaction, rows per destination filtered by the destination's profile."""
    from dicom_agent.db.orm import Job

    settings = fast_settings(monkeypatch)
    sources = S.ct_series()
    study_id = add_study(database_url, sources)
    with session_scope(database_url) as s:
        job = Job(study_id=study_id, model_name="m", revision=0)
        s.add(job)
        s.flush()
        job_id = job.id
    objects = encode_study(F.ct_findings(sources), sources)
    ids = outbox.persist_results(job_id, objects, ["PACS@127.0.0.1:104", "RIS@127.0.0.1:105?profile=sr-only"], settings)
    rows = export_rows(database_url)
    assert sorted(r[0] for r in rows) == sorted(ids) and len(ids) == 4
    assert sorted(r[1] for r in rows if r[2] == "RIS@127.0.0.1:105") == ["sr"]
    again = outbox.persist_results(
        job_id, objects, ["PACS@127.0.0.1:104", "RIS@127.0.0.1:105?profile=sr-only"], settings
    )
    assert sorted(again) == sorted(ids)  # idempotent
    with session_scope(database_url) as s:
        assert {o.job_id for o in s.scalars(select(ResultObject))} == {job_id}
    with pytest.raises(ValueError):
        outbox.persist_results(job_id + 100, objects, [], settings)
