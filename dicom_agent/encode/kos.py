"""Key Object Selection (PS3.3 A.35.4, TID 2010) titled "Of Interest": the source images carrying findings.

highdicom puts a ConceptNameCodeSequence on the IMAGE/COMPOSITE items of the document, which TID 2010 does
not allow (PixelMed reports it as an error), so it is removed after construction; highdicom still re-reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicom_agent.encode.equipment import CHARSET, contributing_equipment, device_observer_context
from dicom_agent.encode.identity import SERIES_NUMBER, ResultIdentity, copy_study_attributes, pin_timestamps
from dicom_agent.inference.types import StudyFindings


def key_image_uids(findings: StudyFindings) -> list[str]:
    """The model's key images, else every image a present finding has a box on, in first-seen order."""
    refs = list(findings.key_images)
    for finding in findings.present:
        refs.extend(box.image for box in finding.boxes)
    return list(dict.fromkeys(ref.sop_instance_uid for ref in refs))


def build_kos(
    findings: StudyFindings,
    sources: Sequence[Dataset],
    ident: ResultIdentity,
    when: datetime,
    manufacturer: str,
) -> hd.ko.KeyObjectSelectionDocument | None:
    """None when no image carries a finding (a KOS must reference at least one object)."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    selected = [by_uid[uid] for uid in key_image_uids(findings) if uid in by_uid]
    if not selected:
        return None
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=selected,
        observer_device_context=device_observer_context(findings.model),
        description="Images with AI findings (unverified)",
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=selected,
        content=content,
        series_instance_uid=ident.uid("kos-series"),
        series_number=SERIES_NUMBER["kos"],
        sop_instance_uid=ident.uid("kos"),
        instance_number=1,
        manufacturer=manufacturer,
        contributing_equipment=[contributing_equipment(findings.model, when)],
        specific_character_set=CHARSET,
        series_description="AI Key Images (unverified)",
    )
    strip_reference_concept_names(kos)
    copy_study_attributes(kos, sources[0])
    pin_timestamps(kos, when)
    return kos


def strip_reference_concept_names(kos: Dataset) -> None:
    """TID 2010: IMAGE and COMPOSITE items carry no concept name."""
    for item in kos.ContentSequence:
        if item.ValueType in ("IMAGE", "COMPOSITE") and "ConceptNameCodeSequence" in item:
            del item.ConceptNameCodeSequence
