"""Hostile and broken input against a subprocess SCP: each case gets the right status, rejection or
timeout; memory stays bounded, nothing lands outside the storage root, and the node keeps serving."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import _config, build_context, evt
from sqlalchemy import create_engine, text

from dicom_agent.dicom.status import StoreStatus
from dicom_agent.receive.contexts import VERIFICATION
from tests.node.conftest import NodeProcess, associate, echo, node_process, send
from tests.node.factory import CR, CT, deflate_bomb, encode_body, file_bytes, make_instance, nested_sequences

GOOD = "GOOD_SCU"
LIMIT = 4 * 1024 * 1024
TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    root = tmp_path_factory.mktemp("hardened")
    node = node_process(
        root,
        allowed_peers=f"{GOOD},HOSTED@127.0.0.1,FARAWAY@192.0.2.1",
        max_dataset_bytes=LIMIT,
        max_pdu_bytes=1024 * 1024,
        max_associations=3,
        network_timeout_s=TIMEOUT_S,
        acse_timeout_s=TIMEOUT_S,
    ).start()
    yield node
    node.stop()


@contextlib.contextmanager
def _raw_sending() -> Iterator[None]:
    """pynetdicom sends a file's bytes as they are (no decoding) while this is on."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def send_file(node: NodeProcess, path: Path, sop_class: str, ts: str, calling: str = GOOD) -> int:
    assoc = associate(node.port, calling=calling, contexts=[build_context(sop_class, [ts])])
    assert assoc.is_established
    try:
        with _raw_sending():
            rsp = assoc.send_c_store(path)
        return int(rsp.Status) if "Status" in rsp else -1
    finally:
        if assoc.is_established:
            assoc.release()


def raw_file(tmp_path: Path, body: bytes, sop_class: str, sop_uid: str, ts: str, name: str = "x.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(file_bytes(body, sop_class, sop_uid, ts))
    return path


def still_serving(node: NodeProcess) -> None:
    assert echo(node.port, calling=GOOD) == 0
    assert send(node.port, [make_instance()], calling=GOOD) == [0]


def rejection_of(node: NodeProcess, **kwargs: Any) -> tuple[int, int, int] | None:
    """(result, source, reason) of an A-ASSOCIATE-RJ, or None if the association was accepted."""
    seen: list[Any] = []
    handlers = [(evt.EVT_ACSE_RECV, lambda event: seen.append(event.primitive))]
    assoc = associate(node.port, evt_handlers=handlers, **kwargs)
    if assoc.is_established:
        assoc.release()
        return None
    assert assoc.is_rejected
    rj = next(p for p in seen if getattr(p, "result", None) in (1, 2))
    return (rj.result, rj.result_source, rj.diagnostic)


# --- association level ----------------------------------------------------------------------------------


def test_unlisted_calling_ae_is_rejected(hardened: NodeProcess) -> None:
    # PS3.8 9.3.4: rejected-permanent (1), service-user (1), calling-AE-title-not-recognized (3)
    assert rejection_of(hardened, calling="INTRUDER") == (1, 1, 3)
    assert rejection_of(hardened, calling="FARAWAY") == (1, 1, 3)  # allowed only from 192.0.2.1
    assert rejection_of(hardened, calling="HOSTED") is None  # allowed from 127.0.0.1
    assert rejection_of(hardened, calling=GOOD) is None
    still_serving(hardened)


def test_wrong_called_ae_is_rejected(hardened: NodeProcess) -> None:
    assert rejection_of(hardened, calling=GOOD, called="SOMEONE_ELSE") == (1, 1, 7)


def test_association_limit(hardened: NodeProcess) -> None:
    time.sleep(1.0)  # acceptor threads of the previous tests' released associations wind down
    held = [associate(hardened.port, calling=GOOD) for _ in range(3)]
    try:
        assert all(a.is_established for a in held)
        # rejected-transient (2), service-provider presentation (3), local-limit-exceeded (2)
        assert rejection_of(hardened, calling=GOOD) == (2, 3, 2)
    finally:
        for a in held:
            a.release()
    time.sleep(0.5)
    still_serving(hardened)


def test_unknown_sop_class_context_is_not_accepted(hardened: NodeProcess) -> None:
    rt_plan = "1.2.840.10008.5.1.4.1.1.481.5"
    assoc = associate(hardened.port, calling=GOOD, contexts=[build_context(VERIFICATION), build_context(rt_plan)])
    assert assoc.is_established
    try:
        (rejected,) = assoc.rejected_contexts
        assert rejected.abstract_syntax == rt_plan and rejected.result == 0x03  # abstract syntax not supported
        ds = make_instance()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = rt_plan
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(ds)
        assert assoc.send_c_echo().Status == 0  # the association is still fine
    finally:
        assoc.release()


def test_dataset_not_matching_context_sop_class(hardened: NodeProcess, tmp_path: Path) -> None:
    ds = make_instance(modality="CR")  # says CR inside, sent on a CT context
    path = raw_file(tmp_path, encode_body(ds), CT, ds.SOPInstanceUID, ExplicitVRLittleEndian)
    assert send_file(hardened, path, CT, ExplicitVRLittleEndian) == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert CR != CT


# --- dataset level --------------------------------------------------------------------------------------


def test_truncated_datasets(hardened: NodeProcess, tmp_path: Path) -> None:
    ds = make_instance(size=64)
    body = encode_body(ds)
    pixel_at = body.index(b"\xe0\x7f\x10\x00")
    for i, cut in enumerate((pixel_at + 100, pixel_at + 6, 300)):
        path = raw_file(tmp_path, body[:cut], CT, ds.SOPInstanceUID, ExplicitVRLittleEndian, f"t{i}.dcm")
        status = send_file(hardened, path, CT, ExplicitVRLittleEndian)
        assert 0xC000 <= status <= 0xC0FF, hex(status)
    still_serving(hardened)


def test_garbage_after_preamble(hardened: NodeProcess, tmp_path: Path) -> None:
    uid = generate_uid()
    for i, ts in enumerate((ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)):
        path = raw_file(tmp_path, os.urandom(5000), CT, uid, ts, f"g{i}.dcm")
        status = send_file(hardened, path, CT, ts)
        assert 0xC000 <= status <= 0xC0FF, hex(status)
    still_serving(hardened)


def test_missing_sop_instance_uid(hardened: NodeProcess, tmp_path: Path) -> None:
    ds = make_instance()
    uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    path = raw_file(tmp_path, encode_body(ds), CT, uid, ExplicitVRLittleEndian)
    assert send_file(hardened, path, CT, ExplicitVRLittleEndian) == StoreStatus.CANNOT_UNDERSTAND_MISSING_UID


def test_hostile_uids_never_become_paths(hardened: NodeProcess, tmp_path: Path) -> None:
    probe = "../../probe"  # relative to the storage root's fan-out folders this aims inside the test's tmp
    cases = [
        make_instance(sop_uid=probe),
        make_instance(study_uid="../../probe-study"),
        make_instance(sop_uid="1." + "2" * 198),
        make_instance(series_uid="1.2.0003"),
    ]
    for i, ds in enumerate(cases):
        meta_uid = ds.SOPInstanceUID if len(ds.SOPInstanceUID) <= 64 else generate_uid()
        path = raw_file(tmp_path, encode_body(ds), CT, meta_uid, ExplicitVRLittleEndian, f"u{i}.dcm")
        assert send_file(hardened, path, CT, ExplicitVRLittleEndian) == StoreStatus.CANNOT_UNDERSTAND_BAD_UID
    for base in (hardened.root, hardened.storage, hardened.root.parent):
        assert not list(base.glob("probe*")) and not list(base.glob("*/probe*"))
    still_serving(hardened)


def test_dataset_over_the_limit(hardened: NodeProcess) -> None:
    big = make_instance(size=1600)  # 1600² × 2 bytes ≈ 5 MB > 4 MiB
    assert send(hardened.port, [big], calling=GOOD) == [StoreStatus.CANNOT_UNDERSTAND_TOO_LARGE]
    still_serving(hardened)


def test_deflate_bomb(hardened: NodeProcess, tmp_path: Path) -> None:
    header = make_instance()
    del header.PixelData
    body = deflate_bomb(header, 1 << 30)  # ~1 MB on the wire, 1 GiB inflated
    assert len(body) < LIMIT
    path = raw_file(tmp_path, body, CT, header.SOPInstanceUID, DeflatedExplicitVRLittleEndian)
    started = time.monotonic()
    assert send_file(hardened, path, CT, DeflatedExplicitVRLittleEndian) == StoreStatus.CANNOT_UNDERSTAND_TOO_LARGE
    assert time.monotonic() - started < 20
    still_serving(hardened)


def test_deflated_dataset_is_accepted(hardened: NodeProcess, tmp_path: Path) -> None:
    """The bounded inflater is not just a wall: a genuine Deflated instance is stored."""
    ds = make_instance(transfer_syntax=DeflatedExplicitVRLittleEndian)
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert send_file(hardened, path, CT, DeflatedExplicitVRLittleEndian) == 0


def test_thousands_of_nested_sequences(hardened: NodeProcess, tmp_path: Path) -> None:
    uid = generate_uid()
    path = raw_file(tmp_path, nested_sequences(5000, uid), CT, uid, ImplicitVRLittleEndian)
    assert send_file(hardened, path, CT, ImplicitVRLittleEndian) == StoreStatus.CANNOT_UNDERSTAND
    still_serving(hardened)


# --- transport level ------------------------------------------------------------------------------------


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the peer closes (or aborts) the connection; fails if it stays open longer."""
    sock.settimeout(seconds)
    started = time.monotonic()
    try:
        while True:
            data = sock.recv(65536)
            if not data or data[:1] == b"\x07":  # EOF, or A-ABORT
                return time.monotonic() - started
    except ConnectionResetError:
        return time.monotonic() - started
    except TimeoutError:
        pytest.fail(f"connection still open after {seconds}s")


def _associate_rq(calling: str = GOOD, called: str = "DICOM_AGENT") -> bytes:
    """A minimal valid A-ASSOCIATE-RQ proposing Verification (PS3.8 9.3.2)."""

    def item(kind: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(payload)) + payload

    app = item(0x10, b"1.2.840.10008.3.1.1.1")
    pc = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, VERIFICATION.encode()) + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4"))
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    body += app + pc + user
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff\x00\x00\x00\x00\x10" + b"x" * 16, id="unknown-pdu-type"),
        pytest.param(b"\x01\x00\xff\xff\xff\xf0" + b"x" * 4096, id="claims-4GB-associate-rq"),
        pytest.param(b"\x04\x00\x00\x00\x00\x0a" + b"\x00" * 10, id="p-data-before-association"),
        pytest.param(b"\x01\x00\x00\x00\x00\x20" + b"\x00" * 32, id="truncated-associate-rq"),
        pytest.param(b"\x01\x00", id="half-a-header"),
    ],
)
def test_malformed_pdus(hardened: NodeProcess, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", hardened.port), timeout=5) as sock:
        sock.sendall(payload)
        _closed_within(sock, TIMEOUT_S * 3 + 5)
    still_serving(hardened)


def test_huge_pdu_after_association_is_refused_before_buffering(hardened: NodeProcess) -> None:
    with socket.create_connection(("127.0.0.1", hardened.port), timeout=5) as sock:
        sock.sendall(_associate_rq())
        assert sock.recv(65536)[:1] == b"\x02"  # A-ASSOCIATE-AC
        sock.sendall(b"\x04\x00\x7f\xff\xff\xff" + b"\x00" * 65536)  # a 2 GiB P-DATA-TF announced
        assert _closed_within(sock, 5) < 5
    still_serving(hardened)


def test_silent_peers_are_dropped(hardened: NodeProcess) -> None:
    with socket.create_connection(("127.0.0.1", hardened.port), timeout=5) as sock:  # never associates
        assert _closed_within(sock, TIMEOUT_S + 5) >= TIMEOUT_S * 0.5
    with socket.create_connection(("127.0.0.1", hardened.port), timeout=5) as sock:  # associates, then nothing
        sock.sendall(_associate_rq())
        assert sock.recv(65536)[:1] == b"\x02"
        assert _closed_within(sock, TIMEOUT_S + 5) >= TIMEOUT_S * 0.5
    still_serving(hardened)


# --- after everything -----------------------------------------------------------------------------------


def test_zz_bounded_memory_and_nothing_outside_the_root(hardened: NodeProcess) -> None:
    """Runs last in this module: the bomb, the 5 MB dataset and the 2 GiB PDU claim have all been tried."""
    still_serving(hardened)
    assert hardened.peak_rss_bytes() < 400 * 1024 * 1024, hardened.peak_rss_bytes()
    allowed_outside = {"db.sqlite", "db.sqlite-wal", "db.sqlite-shm", "scp.log"}
    outside = {p.name for p in hardened.root.iterdir() if p.name != "storage"}
    assert outside <= allowed_outside, outside
    time.sleep(0.5)
    spools = [p for p in (hardened.storage / ".tmp").rglob("*") if p.is_file()]
    assert spools == [], spools
    engine = create_engine(hardened.database_url)
    with engine.connect() as conn:
        paths = [row[0] for row in conn.execute(text("SELECT path FROM instance"))]
    engine.dispose()
    stored = sorted(
        str(p.relative_to(hardened.storage)) for p in hardened.storage.rglob("*.dcm") if ".tmp" not in p.parts
    )
    assert sorted(paths) == stored
