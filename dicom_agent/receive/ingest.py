"""One received instance, from spool file to durable file + index row. Nothing else happens here:
no forwarding, no inference (they follow study completion, outside the association)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from dicom_agent import metrics
from dicom_agent.dicom.header import InstanceHeader
from dicom_agent.errors import DatasetTooLargeError, StorageFullError, UnreadableDatasetError
from dicom_agent.receive.reading import read_header
from dicom_agent.store.filestore import FileStore, SpoolFile
from dicom_agent.store.index import DuplicatePolicy, IndexResult, StoredFile, index_instance

log = logging.getLogger(__name__)

SPOOL_META_ALLOWANCE = 64 * 1024  # preamble + File Meta written by pynetdicom before the dataset


class SopClassMismatchError(UnreadableDatasetError):
    """The dataset's SOP Class differs from the presentation context's (C-STORE 0xA900)."""


@dataclass
class Ingest:
    filestore: FileStore
    session_factory: Callable[[], Session]
    max_dataset_bytes: int
    duplicate_policy: DuplicatePolicy = "keep"

    def new_spool(self) -> SpoolFile:
        return self.filestore.new_spool(self.max_dataset_bytes + SPOOL_META_ALLOWANCE)

    def accept(
        self,
        path: Path,
        spool: SpoolFile | None,
        transfer_syntax: str,
        context_sop_class: str,
        affected_sop_instance: str | None,
        calling_ae: str | None,
    ) -> IndexResult:
        """Checks, stores and indexes the spooled instance at ``path``; raises a ReceiveError subclass
        that the handler maps to a C-STORE status."""
        if spool is not None:
            spool.close()
            if spool.write_error is not None:
                raise StorageFullError(f"spool write failed: {spool.write_error}")
            if spool.overflowed:
                raise DatasetTooLargeError(f"dataset over {self.max_dataset_bytes} bytes")
            size, sha256 = spool.size, spool.sha256
        else:
            size, sha256 = path.stat().st_size, _sha256_of(path)
        if not self.filestore.has_room():
            raise StorageFullError("storage below its free-space reserve")
        ds = read_header(path, transfer_syntax, self.max_dataset_bytes, self.filestore.spool_dir)
        header = InstanceHeader.from_dataset(ds, transfer_syntax)
        if header.sop_class_uid != context_sop_class:
            raise SopClassMismatchError("SOP Class UID differs from the presentation context")
        if affected_sop_instance is not None and header.sop_instance_uid != affected_sop_instance.rstrip("\x00 "):
            raise UnreadableDatasetError("SOP Instance UID differs from the C-STORE request's")

        _fsync_path(path)
        relpath = self.filestore.relpath_for(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        stored = StoredFile(relpath, size, sha256)
        result = index_instance(
            self.session_factory,
            header,
            stored,
            calling_ae,
            place_file=lambda: self._place(path, relpath),
            file_present=self.filestore.exists,
            policy=self.duplicate_policy,
        )
        self.filestore.sync_folder_of(relpath)
        if result.replaced_relpath:
            self.filestore.remove(result.replaced_relpath)
        metrics.INSTANCES_RECEIVED.labels(modality=header.modality or "unknown").inc()
        metrics.BYTES_RECEIVED.inc(size)
        return result

    def _place(self, path: Path, relpath: Path) -> None:
        self.filestore.place(path, relpath)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
