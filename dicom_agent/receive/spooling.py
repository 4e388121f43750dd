"""Received datasets go straight to a spool file in the storage root, never into memory.

pynetdicom's ``STORE_RECV_CHUNKED_DATASET`` mode writes each C-STORE dataset to a ``NamedTemporaryFile``
as its P-DATA fragments arrive and hands the handler the path. We give it our own file object instead: it
lives inside the storage root (so the final rename is atomic), hashes on the way, and stops storing past
the size limit. The file is created in pynetdicom's reader thread of the association, which tells us which
server (and storage root) it belongs to.
"""

from __future__ import annotations

import tempfile
import threading
from typing import Any, Protocol

from pynetdicom import _config, dimse_messages

from dicom_agent.store.filestore import SpoolFile


class SpoolOwner(Protocol):
    """What an AE must offer to have its received datasets spooled (see ``NodeAE``)."""

    def new_spool(self) -> SpoolFile: ...


_lock = threading.Lock()
_spools: dict[str, tuple[SpoolFile, int]] = {}  # spool path -> (file, id of its association)
_installed = False


def install() -> None:
    """Switches pynetdicom to spooled receiving (process-wide; other AEs keep plain temp files)."""
    global _installed
    with _lock:
        if _installed:
            return
        _config.STORE_RECV_CHUNKED_DATASET = True
        setattr(dimse_messages, "NamedTemporaryFile", _spool_factory)  # noqa: B010 - documented hook point
        _installed = True


def _spool_factory(*args: Any, **kwargs: Any) -> Any:
    assoc = getattr(threading.current_thread(), "assoc", None)
    owner = getattr(getattr(assoc, "ae", None), "spool_owner", None)
    if owner is None:
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    spool: SpoolFile = owner.new_spool()
    with _lock:
        _spools[spool.name] = (spool, id(assoc))
    return spool


def take(path: object) -> SpoolFile | None:
    """The spool file behind a handler's ``event.dataset_path``; the caller now owns it."""
    with _lock:
        entry = _spools.pop(str(path), None)
    return entry[0] if entry else None


def discard_for(assoc: object) -> int:
    """Deletes spools of an association that ended mid-dataset (abort, dropped connection)."""
    key = id(assoc)
    with _lock:
        mine = [name for name, (_, owner) in _spools.items() if owner == key]
        spools = [_spools.pop(name)[0] for name in mine]
    for spool in spools:
        spool.discard()
    return len(spools)
