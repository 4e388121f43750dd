"""C-STORE SCU: sends DICOM files to a peer, proposing only the contexts the files need.

Used by ``dicom-agent send`` and by the exporter. Returns a status per file instead of raising for
DIMSE failures, so callers can tell transient from permanent outcomes (PS3.4 B.2.3).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_agent.errors import PermanentExportError, TransientExportError

log = logging.getLogger(__name__)

# SendResult.error when the peer accepted the association but not the file's SOP class / transfer syntax:
# permanent, like 0x0122 (PS3.4 B.2.3 "SOP Class not supported").
CONTEXT_NOT_ACCEPTED = "presentation context not accepted"


@dataclass(frozen=True)
class Peer:
    """A DICOM destination written ``AET@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        """``AET@host:port``; a ``?profile=...`` suffix (export.destinations) is ignored here."""
        try:
            aet, rest = text.strip().split("?", 1)[0].split("@", 1)
            host, port = rest.rsplit(":", 1)
            peer = cls(aet.strip(), host.strip("[] "), int(port))
        except ValueError as exc:
            raise ValueError(f"destination {text!r} is not AET@host:port") from exc
        if not peer.ae_title or len(peer.ae_title) > 16:
            raise ValueError(f"destination {text!r}: AE title must be 1-16 characters")
        return peer

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SendResult:
    path: Path
    sop_instance_uid: str | None
    status: int | None  # None: not sent (association failed or file unreadable)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0 or 0xB000 <= self.status <= 0xBFFF)


def iter_dicom_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files given directly, and the DICOM Part 10 files below given folders, in a stable order.

    Folders are filtered by the ``DICM`` preamble so that ground truth, masks and READMEs beside a study are
    skipped; a file named directly is always tried, so a wrong one gets a clear failure.
    """
    for path in paths:
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            yield from sorted(p for p in found if has_part10_preamble(p))
        else:
            yield path


def has_part10_preamble(path: Path) -> bool:
    """True for a DICOM Part 10 file: 128 bytes of preamble, then ``DICM``."""
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _make_ae(calling_aet: str, timeout_s: float) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.maximum_pdu_size = 0
    return ae


def send_files(
    files: Iterable[Path],
    peer: Peer,
    calling_aet: str = "DICOM_AGENT",
    timeout_s: float = 30.0,
) -> list[SendResult]:
    """C-STORE every file over one association.

    Raises TransientExportError if no association opens, PermanentExportError if the peer accepts none of the
    proposed presentation contexts.
    """
    headers: list[tuple[Path, str, str, str]] = []
    results: list[SendResult] = []
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            headers.append((path, ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID))
        except Exception as exc:  # unreadable files are reported, never sent
            results.append(SendResult(path, None, None, f"unreadable: {exc}"))
    if not headers:
        return results

    ae = _make_ae(calling_aet, timeout_s)
    contexts: dict[tuple[str, str], None] = {}
    for _, sop_class, _, syntax in headers:
        contexts[(sop_class, syntax)] = None
    requested = [build_context(sop_class, [syntax]) for sop_class, syntax in contexts]
    if len(requested) > 128:
        raise ValueError("more than 128 distinct SOP class / transfer syntax pairs in one send")
    ae.requested_contexts = requested

    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            # the peer answered but accepted none of our SOP classes / transfer syntaxes (like 0x0122)
            raise PermanentExportError(f"{peer}: {CONTEXT_NOT_ACCEPTED} for any proposed SOP class")
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
        raise TransientExportError(f"association with {peer} failed: {reason}")
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
    try:
        for path, sop_class, sop_uid, syntax in headers:
            if not assoc.is_established:
                results.append(SendResult(path, sop_uid, None, "association lost"))
                continue
            if (str(sop_class), str(syntax)) not in accepted:
                results.append(SendResult(path, sop_uid, None, CONTEXT_NOT_ACCEPTED))
                continue
            try:
                status = assoc.send_c_store(path)
            except Exception as exc:  # pynetdicom raises for a context the peer did not accept
                results.append(SendResult(path, sop_uid, None, str(exc)))
                continue
            code = int(status.Status) if "Status" in status else None
            results.append(SendResult(path, sop_uid, code, None if code is not None else "no response"))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def echo(peer: Peer, calling_aet: str = "DICOM_AGENT", timeout_s: float = 10.0) -> int:
    """C-ECHO; returns the status, raises TransientExportError when no association opens."""
    ae = _make_ae(calling_aet, timeout_s)
    ae.add_requested_context(Verification)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise TransientExportError(f"association with {peer} failed")
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else -1
    finally:
        assoc.release()
