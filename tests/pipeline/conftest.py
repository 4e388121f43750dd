"""Fixtures for the pipeline tests: stored studies, a real broker, an in-thread Celery worker.

STAND-IN (tests only): the model is replaced by ``StubAdapter`` in these broker/idempotency tests, because they
need to control its timing and inject errors; its output goes through the real encoder, outbox and a real
C-STORE to ``DicomSink``. The end-to-end tests (test_e2e.py) run the real bundled model.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from dicom_agent.db.orm import Instance, Series, Study
from dicom_agent.db.session import session_scope
from dicom_agent.db.states import StudyState
from dicom_agent.dicom.codes import Code
from dicom_agent.inference.types import Box, Finding, ImageRef, ModelIdentity, StudyFindings, StudyInput
from dicom_agent.store.atomic import atomic_write_bytes, hashed_relpath
from tests.pipeline.factory import AXIAL, instance

BROKER_PARAMS: list[Any] = ["sqlalchemy"]
RABBIT_URL = os.environ.get("DICOM_AGENT_TEST_BROKER_URL")
BROKER_PARAMS.append(
    pytest.param("amqp", marks=pytest.mark.skipif(not RABBIT_URL, reason="DICOM_AGENT_TEST_BROKER_URL unset"))
)


def store_study(
    storage: Path,
    modality: str = "CT",
    count: int = 6,
    body_part: str = "CHEST",
    study_uid: str | None = None,
    state: StudyState = StudyState.COMPLETE,
) -> int:
    """Writes a study's files into the storage root and its index rows, as the receiving side does."""
    study_uid = study_uid or generate_uid(prefix="1.2.826.0.1.3680043.10.543.")
    series_uid, frame_uid = generate_uid(), generate_uid()
    datasets = [
        instance(
            study_uid,
            series_uid,
            modality,
            i,
            body_part=body_part,
            orientation=AXIAL if modality == "CT" else None,
            extra={"PixelSpacing": [0.7, 0.7], "SliceThickness": 1.0} if modality == "CT" else {},
            size=32,
        )
        for i in range(1, count + 1)
    ]
    for ds in datasets:
        ds.StudyDate, ds.StudyTime = "20260101", "120000"
        ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber = "19700101", "O", "A1"
        ds.ReferringPhysicianName, ds.StudyID, ds.Manufacturer = "", "1", "ACME"
        ds.FrameOfReferenceUID = frame_uid
    with session_scope() as s:
        study = s.query(Study).filter_by(study_instance_uid=study_uid).one_or_none()
        if study is None:
            study = Study(study_instance_uid=study_uid, modalities=modality, state=state, calling_ae="MODALITY")
            s.add(study)
            s.flush()
        series = Series(
            study_id=study.id,
            series_instance_uid=series_uid,
            modality=modality,
            body_part_examined=body_part,
            series_number=1,
            instance_count=count,
        )
        s.add(series)
        s.flush()
        for ds in datasets:
            import io

            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            rel = hashed_relpath(study_uid, series_uid, ds.SOPInstanceUID)
            atomic_write_bytes(storage, rel, buf.getvalue())
            s.add(
                Instance(
                    series_id=series.id,
                    study_id=study.id,
                    sop_instance_uid=ds.SOPInstanceUID,
                    sop_class_uid=ds.SOPClassUID,
                    transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                    instance_number=ds.InstanceNumber,
                    rows=32,
                    columns=32,
                    path=str(rel),
                    size_bytes=len(buf.getvalue()),
                    sha256="0" * 64,
                    calling_ae="MODALITY",
                )
            )
        study.instance_count = (study.instance_count or 0) + count
        study.state = state
        return study.id


@dataclass
class StubAdapter:
    """Stand-in model (tests only): one nodule with a box on the first image of the first series."""

    delay_s: float = 0.0
    fail_with: list[Exception] = field(default_factory=list)
    calls: int = 0
    device: str = "cpu"
    started: threading.Event = field(default_factory=threading.Event)

    def predict(self, study: StudyInput) -> StudyFindings:
        self.calls += 1
        self.started.set()
        if self.fail_with:
            raise self.fail_with.pop(0)
        time.sleep(self.delay_s)
        first = study.series[0].files[0]
        from pydicom import dcmread

        ds: Dataset = dcmread(first, stop_before_pixels=True)
        ref = ImageRef(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)
        nodule = Finding(
            label="nodule",
            code=Code("27925004", "SCT", "Nodule"),
            name_en="Nodule",
            name_zh="结节",
            probability=0.9,
            present=True,
            boxes=[Box(ref, 4.0, 4.0, 12.0, 12.0)],
            text_en="Nodule.",
            text_zh="结节。",
        )
        return StudyFindings(
            study_instance_uid=study.study_instance_uid,
            model=ModelIdentity("stub", "0.0", "tests", "0" * 64, "test stand-in"),
            findings=[nodule],
            impression={"en": "Nodule.", "zh": "结节。"},
            series_uids=[s.series_instance_uid for s in study.series],
        )


@dataclass
class DicomSink:
    """A real C-STORE SCP (pynetdicom, in a thread) standing for the PACS: records what it receives."""

    port: int
    received: list[str] = field(default_factory=list)  # SOP Instance UIDs, in arrival order
    server: Any = None

    @property
    def destination(self) -> str:
        return f"SINK@127.0.0.1:{self.port}"


@pytest.fixture
def dicom_sink() -> Iterator[DicomSink]:
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        Comprehensive3DSRStorage,
        KeyObjectSelectionDocumentStorage,
        SegmentationStorage,
    )

    from tests.peers import free_port

    sink = DicomSink(free_port())
    ae = AE(ae_title="SINK")
    ae.supported_contexts = AllStoragePresentationContexts
    for uid in (Comprehensive3DSRStorage, KeyObjectSelectionDocumentStorage, SegmentationStorage):
        ae.add_supported_context(uid)

    def on_store(event: Any) -> int:
        sink.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    sink.server = ae.start_server(("127.0.0.1", sink.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield sink
    sink.server.shutdown()


def _use_broker(kind: str, monkeypatch: pytest.MonkeyPatch, sink: DicomSink) -> None:
    if kind == "amqp":
        assert RABBIT_URL is not None
        monkeypatch.setenv("DICOM_AGENT_BROKER_URL", RABBIT_URL)
        monkeypatch.setenv("DICOM_AGENT_QUEUE_PREFIX", f"t{uuid.uuid4().hex[:10]}.")
    monkeypatch.setenv("DICOM_AGENT_DESTINATIONS", sink.destination)
    monkeypatch.setenv("DICOM_AGENT_TASK_RETRY_BASE_S", "0.2")
    from dicom_agent.config import get_settings

    get_settings.cache_clear()


@dataclass
class Pipeline:
    storage: Path
    adapter: StubAdapter
    sink: DicomSink
    start_worker: Callable[..., Any]


def _pipeline(kind: str, monkeypatch: pytest.MonkeyPatch, sink: DicomSink) -> Iterator[Pipeline]:
    """Stand-ins wired into ``tasks.parts`` and a factory for an in-thread worker on the real broker."""
    from celery.contrib.testing.worker import start_worker

    from dicom_agent.config import get_settings
    from dicom_agent.tasks import parts
    from dicom_agent.tasks.app import QUEUES, configure, queue_name

    _use_broker(kind, monkeypatch, sink)
    settings = get_settings()
    adapter = StubAdapter()
    monkeypatch.setattr(parts, "_adapter", adapter)
    app = configure(settings)
    queues = [queue_name(settings, q) for q in QUEUES]

    def worker() -> Any:
        return start_worker(app, pool="solo", perform_ping_check=False, queues=queues, shutdown_timeout=30)

    yield Pipeline(settings.storage_dir, adapter, sink, worker)
    if kind == "amqp":
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for q in queues:
                with contextlib.suppress(Exception):
                    channel.queue_delete(q)


@pytest.fixture(params=BROKER_PARAMS)
def pipeline(
    request: pytest.FixtureRequest, database_url: str, monkeypatch: pytest.MonkeyPatch, dicom_sink: DicomSink
) -> Iterator[Pipeline]:
    """Every broker (embedded; RabbitMQ when DICOM_AGENT_TEST_BROKER_URL) × every database."""
    yield from _pipeline(str(request.param), monkeypatch, dicom_sink)


@pytest.fixture
def embedded_pipeline(settings_env: Path, monkeypatch: pytest.MonkeyPatch, dicom_sink: DicomSink) -> Iterator[Pipeline]:
    """The embedded defaults only (SQLite + kombu's SQLAlchemy transport): for the slower scenario tests."""
    from dicom_agent.db.migrate import upgrade

    upgrade(f"sqlite:///{settings_env / 'db.sqlite'}")
    yield from _pipeline("sqlalchemy", monkeypatch, dicom_sink)


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def study_state(study_id: int) -> str:
    with session_scope() as s:
        study = s.get(Study, study_id)
        assert study is not None
        return study.state
