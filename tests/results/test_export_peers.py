"""Delivery over real associations: Orthanc as the PACS, and pynetdicom SCPs / a silent socket that misbehave."""

from __future__ import annotations

import io
import threading
import time
from datetime import timedelta

import pytest
from pydicom import dcmread
from sqlalchemy import update

from dicom_agent.config import Settings
from dicom_agent.db.orm import Export, utcnow
from dicom_agent.db.session import session_scope
from dicom_agent.export.runner import Exporter, deliver
from tests.peers import Orthanc, free_port
from tests.results import findings as F
from tests.results.outbox_helpers import export_rows, fast_settings, publish_ct
from tests.results.scps import silent_listener, store_scp


def make_due(url: str) -> None:
    with session_scope(url) as s:
        s.execute(update(Export).where(Export.state == "pending").values(next_try_at=utcnow() - timedelta(seconds=1)))


def run_until_settled(exporter: Exporter, url: str, timeout_s: float = 30) -> list[tuple]:  # type: ignore[type-arg]
    """Runs passes (waiting out the short backoffs) until no row is pending or sending."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exporter.run_once()
        rows = export_rows(url)
        if all(r[3] in ("done", "dead") for r in rows):
            return rows
        time.sleep(0.05)
    raise AssertionError(f"exports did not settle: {export_rows(url)}")


def impression_zh(raw: bytes) -> str:
    ds = dcmread(io.BytesIO(raw))
    container = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375")
    return next(
        str(i.TextValue)
        for i in container.ContentSequence
        if i.ContentSequence[0].ConceptCodeSequence[0].CodeValue == "zh-CN"
    )


@pytest.mark.orthanc
def test_round_trip_into_orthanc(database_url: str, monkeypatch: pytest.MonkeyPatch, orthanc: Orthanc) -> None:
    settings = fast_settings(monkeypatch)
    publish_ct(settings, [f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"])
    rows = run_until_settled(Exporter(settings), database_url)
    assert [r[3] for r in rows] == ["done"] * 3 and all(r[4] == 1 for r in rows)
    ids = orthanc.instances()
    assert len(ids) == 3
    modalities = sorted(orthanc.get(f"/instances/{i}/tags?simplify")["Modality"] for i in ids)
    assert modalities == ["KO", "SEG", "SR"]
    sr_id = next(i for i in ids if orthanc.get(f"/instances/{i}/tags?simplify")["Modality"] == "SR")
    raw = orthanc.get(f"/instances/{sr_id}/file")
    assert impression_zh(raw) == F.IMPRESSION_ZH
    tags = orthanc.get(f"/instances/{sr_id}/tags?simplify")
    assert tags["SpecificCharacterSet"] == "ISO_IR 192" and tags["VerificationFlag"] == "UNVERIFIED"


@pytest.mark.orthanc
@pytest.mark.slow
def test_orthanc_down_then_back_nothing_lost_nothing_duplicated(
    database_url: str, monkeypatch: pytest.MonkeyPatch, orthanc: Orthanc
) -> None:
    settings = fast_settings(monkeypatch, EXPORT_MAX_ATTEMPTS=10)
    orthanc.stop()
    publish_ct(settings, [f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"])
    exporter = Exporter(settings)
    exporter.run_once()
    rows = export_rows(database_url)
    assert [r[3] for r in rows] == ["pending"] * 3 and all(r[4] == 1 and r[5] for r in rows)
    orthanc.start()
    make_due(database_url)
    rows = run_until_settled(exporter, database_url)
    assert [r[3] for r in rows] == ["done"] * 3
    assert len(orthanc.instances()) == 3
    # a replay of delivered rows (or a crash between send and mark) re-sends the same UIDs: still 3 instances
    with session_scope(database_url) as s:
        s.execute(update(Export).values(state="sending"))
    from dicom_agent.export.runner import recover_interrupted

    assert recover_interrupted(exporter.factory) == 3
    run_until_settled(exporter, database_url)
    assert len(orthanc.instances()) == 3


def test_failure_status_goes_dead_at_once(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    with store_scp(lambda log, ds: 0xA900) as (port, log):
        publish_ct(settings, [f"TEST_SCP@127.0.0.1:{port}"])
        rows = run_until_settled(Exporter(settings), database_url)
    assert [r[3] for r in rows] == ["dead"] * 3
    assert all(r[4] == 1 and "0xA900" in (r[5] or "") for r in rows)
    assert log.calls == 3 and log.received == []


def test_out_of_resources_is_retried_then_delivered_once(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)

    def first_busy(log: object, ds: object) -> int:
        return 0xA700 if log.calls <= 3 else 0x0000

    with store_scp(first_busy) as (port, log):
        publish_ct(settings, [f"TEST_SCP@127.0.0.1:{port}"])
        rows = run_until_settled(Exporter(settings), database_url)
    assert [r[3] for r in rows] == ["done"] * 3 and all(r[4] == 2 for r in rows)
    assert len(log.received) == len(set(log.received)) == 3


def test_unsupported_sop_class_goes_dead(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    with store_scp(only_ct=True) as (port, log):
        publish_ct(settings, [f"TEST_SCP@127.0.0.1:{port}"])
        rows = run_until_settled(Exporter(settings), database_url)
    assert [r[3] for r in rows] == ["dead"] * 3
    assert all("presentation context not accepted" in (r[5] or "") for r in rows) and log.calls == 0


def test_refused_association_retries_to_the_limit(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)  # EXPORT_MAX_ATTEMPTS=3
    with store_scp(require_called_aet="ONLY_ME") as (port, log):
        publish_ct(settings, [f"SOMEONE@127.0.0.1:{port}"])
        started = time.monotonic()
        rows = run_until_settled(Exporter(settings), database_url)
    assert [r[3] for r in rows] == ["dead"] * 3
    assert all(r[4] == 3 and "rejected" in (r[5] or "") for r in rows)
    assert log.calls == 0
    assert time.monotonic() - started < 20


def test_nothing_listening_is_transient(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    publish_ct(settings, [f"NOBODY@127.0.0.1:{free_port()}"])
    Exporter(settings).run_once()
    rows = export_rows(database_url)
    assert [r[3] for r in rows] == ["pending"] * 3 and all(r[4] == 1 for r in rows)


def test_hanging_destination_times_out(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch, DIMSE_TIMEOUT_S=1)
    with silent_listener() as port:
        publish_ct(settings, [f"HANG@127.0.0.1:{port}"])
        started = time.monotonic()
        Exporter(settings).run_once()
        elapsed = time.monotonic() - started
    rows = export_rows(database_url)
    assert [r[3] for r in rows] == ["pending"] * 3 and all(r[4] == 1 for r in rows)
    assert elapsed < 10  # one association attempt, bounded by the timeout, for all three rows


def test_slow_store_response_times_out(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch, DIMSE_TIMEOUT_S=1)
    with store_scp(delay_s=2.5) as (port, _log):
        publish_ct(settings, [f"TEST_SCP@127.0.0.1:{port}"])
        Exporter(settings).run_once()
        rows = export_rows(database_url)
    assert all(r[3] == "pending" and r[4] == 1 for r in rows), rows


def test_run_forever_delivers_and_stops(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    with store_scp() as (port, log):
        exporter = Exporter(settings)
        exporter.poll_s = 0.2
        stop = threading.Event()
        thread = threading.Thread(target=exporter.run_forever, args=(stop,), daemon=True)
        thread.start()
        publish_ct(settings, [f"TEST_SCP@127.0.0.1:{port}"])  # wakes the loop
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(log.received) < 3:
            time.sleep(0.05)
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert len(log.received) == 3 and [r[3] for r in export_rows(database_url)] == ["done"] * 3


def test_idle_exporter_sleeps_until_next_due(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings: Settings = fast_settings(monkeypatch)
    exporter = Exporter(settings)
    exporter.poll_s = 30
    assert exporter.sleep_seconds() == 30  # nothing queued: sleep a full poll, no busy loop
    publish_ct(settings, ["PACS@127.0.0.1:104"])
    with session_scope(database_url) as s:
        s.execute(update(Export).values(next_try_at=utcnow() + timedelta(seconds=5)))
    assert 3 < exporter.sleep_seconds() <= 5


def test_deliver_one_row(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(monkeypatch)
    with store_scp() as (port, log):
        publish_ct(settings, [f"TEST_SCP@127.0.0.1:{port}"])
        first = export_rows(database_url)[0][0]
        assert deliver(first, settings) == "done"
        assert deliver(first, settings) is None  # not pending any more
    assert len(log.received) == 1
