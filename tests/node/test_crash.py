"""Crash test: SIGKILL the SCP process mid-stream; every acknowledged instance survives, exactly once."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

from tests.node.conftest import associate, node_process, send
from tests.node.factory import make_instance

TOTAL = 300
KILL_AFTER = 100


def _study_state(url: str, uid: str) -> tuple[str, int, int] | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT state, revision, instance_count FROM study WHERE study_instance_uid = :u"), {"u": uid}
            ).first()
        return None if row is None else (row[0], row[1], row[2])
    finally:
        engine.dispose()


def _wait_completed(url: str, uid: str, revision: int, timeout: float = 30) -> tuple[str, int, int]:
    """Waits until the study of this revision has left ``receiving`` (the scp role routes it on at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _study_state(url, uid)
        if found is not None and found[0] != "receiving" and found[1] == revision:
            return found
        time.sleep(0.2)
    raise AssertionError(f"study revision {revision} not complete after {timeout}s: {_study_state(url, uid)}")


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    node = node_process(tmp_path / "node", study_quiet_seconds=2).start()
    study, series = generate_uid(), generate_uid()
    datasets = [make_instance(study, series, number=i + 1, size=32) for i in range(TOTAL)]
    acked: list[str] = []
    sender_error: list[BaseException] = []

    def stream() -> None:
        assoc = associate(node.port, datasets[:1])
        try:
            for ds in datasets:
                rsp = assoc.send_c_store(ds)
                if "Status" not in rsp:
                    return
                if rsp.Status == 0:
                    acked.append(ds.SOPInstanceUID)
        except BaseException as exc:  # the association dies with the process
            sender_error.append(exc)
        finally:
            if assoc.is_established:
                assoc.abort()

    sender = threading.Thread(target=stream)
    try:
        sender.start()
        deadline = time.monotonic() + 120
        while len(acked) < KILL_AFTER and sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        node.kill()  # SIGKILL: no cleanup of any kind
        sender.join(30)
        assert KILL_AFTER <= len(acked) < TOTAL, len(acked)

        node.start()  # same storage root, same database, same port
        engine = create_engine(node.database_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT sop_instance_uid, path, sha256 FROM instance")).all()
        engine.dispose()
        by_uid: dict[str, list[tuple[str, str]]] = {}
        for uid, path, sha in rows:
            by_uid.setdefault(uid, []).append((path, sha))
        for uid in acked:  # every Success: indexed once, on disk, readable, intact
            assert len(by_uid.get(uid, [])) == 1, uid
            ((path, sha),) = by_uid[uid]
            data = (node.storage / path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == sha
            assert dcmread(node.storage / path).SOPInstanceUID == uid
        # the half-received study is completed after the restart, from the database alone
        _, _, count = _wait_completed(node.database_url, study, revision=0)
        assert count == len(rows)

        # the sender retries everything: acknowledged ones are identical re-sends, no duplicates
        assert send(node.port, datasets) == [0] * TOTAL
        _, _, count = _wait_completed(node.database_url, study, revision=1)
        assert count == TOTAL
        stored = [p for p in node.storage.rglob("*.dcm") if ".tmp" not in p.parts]
        assert len(stored) == TOTAL
        assert not [p for p in (node.storage / ".tmp").rglob("*") if p.is_file()]  # the killed spool is gone
    finally:
        node.stop()
