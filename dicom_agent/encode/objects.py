"""What the encoders hand to storage and export: a dataset with its kind and UIDs, and its Part 10 bytes."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Literal

from pydicom import Dataset

ObjectKind = Literal["sr", "seg", "kos", "sc", "gsps", "sr_signed"]


@dataclass(frozen=True)
class EncodedObject:
    """One derived DICOM object ready to be stored and sent."""

    kind: ObjectKind
    dataset: Dataset
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str

    @classmethod
    def of(cls, kind: ObjectKind, ds: Dataset) -> EncodedObject:
        return cls(kind, ds, str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID))

    def to_bytes(self) -> bytes:
        """The Part 10 file; deterministic for a deterministic dataset."""
        return dataset_bytes(self.dataset)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


def dataset_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
