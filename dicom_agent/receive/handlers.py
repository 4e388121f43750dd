"""Thin pynetdicom event handlers (bound with their dependencies); each returns a named status.

C-STORE statuses (PS3.4 B.2.3): Success only after the file is fsynced and its index row committed;
0xA700 when storage is short; 0xA900 when the dataset does not match the context's SOP Class; the
0xC000 range for data we cannot understand (0xC001 missing UID, 0xC002 invalid UID, 0xC003 too large).
Anything unexpected is left to pynetdicom, which logs it and answers its own failure status.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy.exc import OperationalError

from dicom_agent import metrics
from dicom_agent.dicom.header import InvalidUidError, MissingUidError
from dicom_agent.dicom.status import EchoStatus, StoreStatus
from dicom_agent.errors import DatasetTooLargeError, StorageFullError, UnreadableDatasetError
from dicom_agent.receive import spooling
from dicom_agent.receive.ingest import Ingest, SopClassMismatchError

log = logging.getLogger(__name__)


def handle_store(event: Event, ingest: Ingest) -> int:
    path = Path(event.dataset_path)
    spool = spooling.take(path)
    calling_ae = event.assoc.requestor.ae_title
    context = event.context
    request = event.request
    assert isinstance(request, C_STORE)
    try:
        ingest.accept(
            path,
            spool,
            transfer_syntax=str(context.transfer_syntax),
            context_sop_class=str(context.abstract_syntax),
            affected_sop_instance=request.AffectedSOPInstanceUID,
            calling_ae=calling_ae,
        )
    except StorageFullError as exc:
        return _refuse(StoreStatus.REFUSED_OUT_OF_RESOURCES, exc, calling_ae)
    except DatasetTooLargeError as exc:
        return _refuse(StoreStatus.CANNOT_UNDERSTAND_TOO_LARGE, exc, calling_ae)
    except MissingUidError as exc:
        return _refuse(StoreStatus.CANNOT_UNDERSTAND_MISSING_UID, exc, calling_ae)
    except InvalidUidError as exc:
        return _refuse(StoreStatus.CANNOT_UNDERSTAND_BAD_UID, exc, calling_ae)
    except SopClassMismatchError as exc:
        return _refuse(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, exc, calling_ae)
    except UnreadableDatasetError as exc:
        return _refuse(StoreStatus.CANNOT_UNDERSTAND, exc, calling_ae)
    except (OperationalError, OSError) as exc:  # database or disk unavailable: worth a retry by the peer
        log.exception("C-STORE from %s could not be stored", calling_ae)
        return _refuse(StoreStatus.REFUSED_OUT_OF_RESOURCES, exc, calling_ae)
    finally:
        if spool is not None:
            spool.discard()  # no-op once the file was renamed into place
    return StoreStatus.SUCCESS


def _refuse(status: StoreStatus, exc: Exception, calling_ae: str) -> int:
    log.warning("C-STORE from %s refused with %s (0x%04X): %s", calling_ae, status.name, status, exc)
    metrics.REJECTIONS.labels(reason=status.name.lower()).inc()
    return status


def handle_echo(event: Event) -> int:
    return EchoStatus.SUCCESS


def handle_connection_closed(event: Event) -> None:
    """Deletes what an association left half-received (aborted or dropped mid-dataset), and frees the
    slot of a connection that closed before associating.

    pynetdicom's acceptor thread otherwise waits the full ACSE timeout for an A-ASSOCIATE-RQ that can no
    longer come, holding one of the ``MAX_ASSOCIATIONS`` slots: a peer sending garbage in a loop could
    lock everyone out. ``None`` on its queue is what that wait returns on timeout, so it ends at once.
    """
    assoc = event.assoc
    if getattr(assoc.requestor, "primitive", None) is None and not assoc.is_established:
        assoc.dul.to_user_queue.put(None)
    left = spooling.discard_for(assoc)
    if left:
        log.warning("association from %s ended mid-dataset; %d partial file(s) removed", _peer(event), left)


def handle_accepted(event: Event) -> None:
    metrics.ASSOCIATIONS.labels(calling_ae=event.assoc.requestor.ae_title).inc()


def handle_rejected(event: Event) -> None:
    log.warning("association from %s (calling AE %r) rejected", _peer(event), event.assoc.requestor.ae_title)
    metrics.REJECTIONS.labels(reason="association").inc()


def handle_aborted(event: Event) -> None:
    log.warning("association from %s aborted", _peer(event))


def _peer(event: Event) -> str:
    return f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
