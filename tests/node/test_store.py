"""Durable receive and index over real associations: store, re-send identical, re-send different, policies."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from dicom_agent.config import Settings
from dicom_agent.db.orm import AuditEvent, Instance, Series, Study
from dicom_agent.db.session import session_scope
from dicom_agent.dicom.status import StoreStatus
from dicom_agent.receive.server import ServerHandle
from tests.node.conftest import StartNode, echo, send
from tests.node.factory import make_instance


def _rows(settings: Settings) -> tuple[int, int, int]:
    with session_scope(settings.database_url) as s:
        return (
            s.scalar(select(func.count()).select_from(Study)) or 0,
            s.scalar(select(func.count()).select_from(Series)) or 0,
            s.scalar(select(func.count()).select_from(Instance)) or 0,
        )


def _stored_files(settings: Settings) -> list[Path]:
    root = settings.storage_dir.resolve()
    return sorted(p for p in root.rglob("*.dcm") if ".tmp" not in p.relative_to(root).parts)


def test_echo(node: ServerHandle) -> None:
    assert echo(node.port) == 0


def test_store_writes_hashed_files_and_index_rows(node: ServerHandle, settings: Settings) -> None:
    study = make_instance().StudyInstanceUID
    series = "1.2.3.4.5"
    datasets = [make_instance(study, series, number=i) for i in range(1, 4)]
    assert send(node.port, datasets) == [StoreStatus.SUCCESS] * 3

    assert _rows(settings) == (1, 1, 3)
    files = _stored_files(settings)
    assert len(files) == 3
    for path in files:
        assert not any(uid in str(path) for ds in datasets for uid in (ds.SOPInstanceUID, study, series))
    with session_scope(settings.database_url) as s:
        st = s.scalars(select(Study)).one()
        assert (st.study_instance_uid, st.state, st.instance_count, st.modalities) == (study, "receiving", 3, "CT")
        assert st.calling_ae == "TEST_SCU" and st.patient_id == "NODE-1"
        for row in s.scalars(select(Instance)):
            path = settings.storage_dir / row.path
            assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256
            back = dcmread(path)
            assert back.SOPInstanceUID == row.sop_instance_uid
            assert back.file_meta.TransferSyntaxUID == row.transfer_syntax_uid
            assert back.pixel_array.shape == (16, 16)


def test_identical_resend_is_acknowledged_without_duplicate(node: ServerHandle, settings: Settings) -> None:
    ds = make_instance()
    assert send(node.port, [ds]) == [0]
    assert send(node.port, [ds, ds]) == [0, 0]
    assert _rows(settings) == (1, 1, 1)
    assert len(_stored_files(settings)) == 1
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0
        assert s.scalars(select(Study)).one().instance_count == 1


def test_different_resend_keeps_original_and_records_security_event(node: ServerHandle, settings: Settings) -> None:
    original = make_instance(seed=1)
    tampered = make_instance(original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID, seed=2)
    assert send(node.port, [original]) == [0]
    (path,) = _stored_files(settings)
    before = path.read_bytes()
    assert send(node.port, [tampered], calling="OTHER_SCU") == [StoreStatus.SUCCESS]
    assert path.read_bytes() == before
    assert dcmread(path).PixelData == original.PixelData
    assert _rows(settings) == (1, 1, 1)
    with session_scope(settings.database_url) as s:
        event = s.scalars(select(AuditEvent)).one()
        assert event.security and event.action == "instance_conflict_kept"
        assert event.detail is not None and event.detail["calling_ae"] == "OTHER_SCU"
        assert event.detail["original_sha256"] == hashlib.sha256(before).hexdigest()


def test_overwrite_policy_replaces_and_records(start_node: StartNode) -> None:
    node = start_node(duplicate_policy="overwrite")
    from dicom_agent.config import get_settings

    settings = get_settings()
    original = make_instance(seed=1)
    newer = make_instance(original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID, seed=2)
    assert send(node.port, [original]) == [0]
    assert send(node.port, [newer]) == [0]
    (path,) = _stored_files(settings)
    assert dcmread(path).PixelData == newer.PixelData
    assert _rows(settings) == (1, 1, 1)
    with session_scope(settings.database_url) as s:
        assert s.scalars(select(AuditEvent)).one().action == "instance_overwritten"
        assert s.scalars(select(Study)).one().instance_count == 1


def test_concurrent_associations_same_study(node: ServerHandle, settings: Settings) -> None:
    """Four associations at once send one study (two series) plus the same instance each: no unique-key
    failure, every row once, counts exact."""
    study = make_instance().StudyInstanceUID
    shared = make_instance(study, "1.2.3.1", number=99)
    batches = [
        [make_instance(study, f"1.2.3.{k % 2}", number=k * 10 + i) for i in range(5)] + [shared] for k in range(4)
    ]
    results: list[list[int]] = [[] for _ in batches]

    def run(k: int) -> None:
        results[k] = send(node.port, batches[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r == [0] * 6 for r in results), results
    assert _rows(settings) == (1, 2, 21)
    with session_scope(settings.database_url) as s:
        assert s.scalars(select(Study)).one().instance_count == 21
        assert sorted(x.instance_count for x in s.scalars(select(Series))) == [10, 11]


@pytest.mark.dcmtk
def test_dcmtk_storescu_and_echoscu(node: ServerHandle, settings: Settings, tmp_path: Path, dcmtk_tools: None) -> None:
    import subprocess

    from tests.node.factory import make_series
    from tests.peers import dcmtk

    files = make_series(tmp_path / "in", 5)
    echo_run = subprocess.run(
        [dcmtk("echoscu"), "-aet", "DCMTK", "-aec", "DICOM_AGENT", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert echo_run.returncode == 0, echo_run.stderr
    run = subprocess.run(
        [dcmtk("storescu"), "-aet", "DCMTK", "-aec", "DICOM_AGENT", "127.0.0.1", str(node.port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert _rows(settings) == (1, 1, 5)


def test_receive_metrics_count_instances_bytes_and_associations(node: ServerHandle) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (value("dicom_agent_instances_received_total", modality="CT"), value("dicom_agent_received_bytes_total"))
    assocs = value("dicom_agent_associations_total", calling_ae="TEST_SCU")
    datasets = [make_instance(number=i) for i in range(1, 3)]
    assert send(node.port, datasets) == [StoreStatus.SUCCESS] * 2
    assert value("dicom_agent_instances_received_total", modality="CT") == before[0] + 2
    assert value("dicom_agent_received_bytes_total") > before[1] + 2 * 16 * 16 * 2
    assert value("dicom_agent_associations_total", calling_ae="TEST_SCU") == assocs + 1
