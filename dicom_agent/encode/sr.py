"""The result of record: one Comprehensive 3D SR per (study, model run), root template TID 1500.

Content tree as validated in dicom-outputs.md ("SR content tree"): device observer context, Procedure reported
from CID 100, Image Library of the referenced images, Imaging Measurements with TID 1501 (study-level
findings), TID 1410 (one per box: closed 5-point SCOORD POLYLINE on the exact source image, "Bounded by"; the
lesion's diameter and PET SUVmax on the box of the image each was measured on) and
TID 1411 (one per SEG segment), then a Qualitative Evaluations container with the impression in English and
Chinese, each TEXT tagged with Language of Content Item and Descendants (121049), and, when the model's free-text
narrative disagrees with its coded findings, a Comment in the same languages saying where. highdicom has no API
for that container, so it is appended by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from dicom_agent.dicom.codes import (
    ABSENT,
    CHINESE_SIMPLIFIED,
    ENGLISH_US,
    IMAGING_MEASUREMENT_REPORT,
    NO_ABNORMALITY_DETECTED,
    PRESENT,
    Code,
)
from dicom_agent.encode.equipment import CHARSET, contributing_equipment, device_observer_context, sr_algorithm_id
from dicom_agent.encode.identity import SERIES_NUMBER, ResultIdentity, copy_study_attributes, pin_timestamps
from dicom_agent.encode.seg import EncodedSeg, SegmentInfo, coded, sort_series
from dicom_agent.errors import EncodeError
from dicom_agent.inference.agreement import disagreement_comment, unplaced_comment
from dicom_agent.inference.render import join_sentences
from dicom_agent.inference.types import LANGUAGES, Box, Finding, ModelIdentity, StudyFindings

DRAFT_SERIES_DESCRIPTION = "AI Results (unverified)"
LANGUAGE = Code("121049", "DCM", "Language of Content Item and Descendants")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
IMPRESSION = Code("121073", "DCM", "Impression")
COMMENT = Code("121106", "DCM", "Comment")
LATERALITY = {
    "right": Code("24028007", "SCT", "Right"),
    "left": Code("7771000", "SCT", "Left"),
    "bilateral": Code("51440002", "SCT", "Right and left"),
}
# CID 100 (Quantitative Diagnostic Imaging Procedures) per modality.
PROCEDURE_BY_MODALITY = {
    "CT": Code("25045-6", "LN", "CT unspecified body region"),
    "PT": Code("44136-0", "LN", "PET unspecified body region"),
}
PROJECTION_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
LANGUAGE_CODES = {"en": ENGLISH_US, "zh": CHINESE_SIMPLIFIED}


def probability_measurement(probability: float, model: ModelIdentity) -> hd.sr.Measurement:
    """NUM Probability in UCUM % (0-100), with TID 4019 algorithm identification as its children."""
    return hd.sr.Measurement(
        name=codes.DCM.Probability,
        value=round(100.0 * float(probability), 2),
        unit=hd.sr.CodedConcept("%", "UCUM", "Percent"),
        algorithm_id=sr_algorithm_id(model),
    )


def lesion_measurements(finding: Finding, j: int, model: ModelIdentity) -> list[hd.sr.Measurement]:
    """A finding's measurements on its ``j``-th box group: the diameter on the box of the image it was measured
    on, the SUVmax (SUVbw, derivation Maximum, UCUM g/ml{SUVbw}) on the box of the slice holding that voxel —
    so the group's region contains what it states; TID 4019 on each NUM, as for the probability."""
    out = []
    if finding.size_mm is not None and j == finding.size_on:
        out.append((codes.SCT.Diameter, finding.size_mm, codes.UCUM.Millimeter, None))
    if finding.suv_max is not None and j == finding.suv_on:
        out.append((codes.DCM.Suvbw, finding.suv_max, codes.UCUM.StandardizedUptakeValueBodyWeight, codes.SCT.Maximum))
    return [
        hd.sr.Measurement(
            name=name, value=float(value), unit=unit, derivation=derivation, algorithm_id=sr_algorithm_id(model)
        )
        for name, value, unit, derivation in out
    ]


def finding_sites(finding: Finding | SegmentInfo, laterality: str | None = None) -> list[hd.sr.FindingSite] | None:
    if finding.finding_site is None:
        return None
    side = LATERALITY.get(laterality or "")
    return [hd.sr.FindingSite(coded(finding.finding_site), laterality=coded(side) if side else None)]


def presence(code: Code, present: bool) -> hd.sr.QualitativeEvaluation:
    """CODE (finding) = Present / Absent."""
    return hd.sr.QualitativeEvaluation(coded(code), coded(PRESENT if present else ABSENT))


def procedure_reported(sources: Sequence[Dataset]) -> list[hd.sr.CodedConcept]:
    modalities = sorted({str(ds.Modality) for ds in sources})
    found = {PROCEDURE_BY_MODALITY.get(m, PROJECTION_PROCEDURE) for m in modalities}
    return [coded(c) for c in sorted(found)]


def language_item(lang: str) -> hd.sr.CodeContentItem:
    """HAS CONCEPT MOD (121049) = RFC 5646 language code with the standard's meaning."""
    if lang not in LANGUAGE_CODES:
        raise EncodeError(f"no RFC 5646 code for language {lang!r}")
    return hd.sr.CodeContentItem(
        name=coded(LANGUAGE),
        value=coded(LANGUAGE_CODES[lang]),
        relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
    )


def impression_container(
    texts: Mapping[str, str | None], comments: Mapping[str, str | None] | None = None
) -> hd.sr.ContainerContentItem | None:
    """CONTAINS (Qualitative Evaluations): one TEXT Impression per language, then one TEXT Comment per language
    (the decoder-disagreement note), each tagged with its language."""
    items = []
    for name, by_lang in ((IMPRESSION, texts), (COMMENT, comments or {})):
        for lang in LANGUAGES:
            text = (by_lang.get(lang) or "").strip()
            if not text:
                continue
            item = hd.sr.TextContentItem(
                name=coded(name), value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            item.ContentSequence = DicomSequence([language_item(lang)])
            items.append(item)
    if not items:
        return None
    container = hd.sr.ContainerContentItem(
        name=coded(QUALITATIVE_EVALUATIONS), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = DicomSequence(items)
    return container


class _Groups:
    """Builds the measurement groups in the order TID 1501, TID 1410, TID 1411."""

    def __init__(self, ident: ResultIdentity, model: ModelIdentity, by_uid: dict[str, Dataset]) -> None:
        self.ident, self.model, self.by_uid = ident, model, by_uid
        self.referenced: dict[str, Dataset] = {}

    def study_level(self, k: int, finding: Finding) -> hd.sr.MeasurementsAndQualitativeEvaluations:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=self.ident.uid("finding", finding.label, str(k)),
                identifier=f"AI {finding.name_en} #{k + 1}"[:64],
            ),
            finding_type=coded(finding.code),
            finding_sites=finding_sites(finding, finding.laterality),
            measurements=[probability_measurement(finding.probability, self.model)],
            qualitative_evaluations=[presence(finding.code, finding.present)],
        )

    def nothing_found(self) -> hd.sr.MeasurementsAndQualitativeEvaluations:
        """TID 1500 needs one group: a model that reports no finding at all says so explicitly."""
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=self.ident.uid("finding", "none"), identifier="AI no finding"
            ),
            finding_type=coded(NO_ABNORMALITY_DETECTED),
            qualitative_evaluations=[presence(NO_ABNORMALITY_DETECTED, True)],
        )

    def box(self, k: int, j: int, finding: Finding, box: Box) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
        source = self.by_uid.get(box.image.sop_instance_uid)
        if source is None:
            raise EncodeError("a box refers to an image that is not among the sources")
        self.referenced[box.image.sop_instance_uid] = source
        frames = [box.image.frame_number] if box.image.frame_number else None
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array(box.polyline(), dtype=float),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source, referenced_frame_numbers=frames),
        )
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=self.ident.uid("box", finding.label, str(k), str(j)),
                identifier=f"AI {finding.name_en} #{k + 1} box {j + 1}"[:64],
            ),
            referenced_region=region,
            finding_type=coded(finding.code),
            finding_sites=finding_sites(finding, finding.laterality),
            measurements=[
                probability_measurement(finding.probability, self.model),
                *lesion_measurements(finding, j, self.model),
            ],
            qualitative_evaluations=[presence(finding.code, True)],
            geometric_purpose=codes.SCT.BoundedBy,
        )

    def segment(self, seg: EncodedSeg, info: SegmentInfo) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
        measurements = [probability_measurement(info.probability, self.model)]
        if info.volume_mm3 is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=codes.SCT.Volume, value=round(info.volume_mm3, 2), unit=codes.UCUM.CubicMillimeter
                )
            )
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=info.tracking_uid, identifier=info.tracking_id),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.dataset.SOPClassUID,
                sop_instance_uid=seg.dataset.SOPInstanceUID,
                segment_number=info.segment_number,
                source_series=hd.sr.SourceSeriesForSegmentation(info.series_instance_uid),
            ),
            finding_type=coded(info.code),
            finding_sites=finding_sites(info, info.laterality),
            measurements=measurements,
            qualitative_evaluations=[presence(info.code, True)],
        )


def build_sr(
    findings: StudyFindings,
    sources: Sequence[Dataset],
    segs: Sequence[EncodedSeg],
    ident: ResultIdentity,
    when: datetime,
    manufacturer: str,
) -> hd.sr.Comprehensive3DSR:
    """The AI draft: COMPLETE / UNVERIFIED / PRELIMINARY, in its own series "AI Results (unverified)"."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    groups = _Groups(ident, findings.model, by_uid)
    segmented = {(s.series_instance_uid, s.label) for seg in segs for s in seg.segments}
    study_level: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    planar: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    for k, finding in enumerate(findings.findings):
        boxes = finding.boxes if finding.present else []
        in_seg = finding.mask is not None and (finding.mask.series_instance_uid, finding.label) in segmented
        if boxes:
            planar.extend(groups.box(k, j, finding, box) for j, box in enumerate(boxes))
        elif not (finding.present and in_seg):
            study_level.append(groups.study_level(k, finding))
    volumetric = [groups.segment(seg, info) for seg in segs for info in seg.segments]

    library = list(groups.referenced.values()) or _first_of_each_series(sources)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer_context(findings.model)),
        procedure_reported=procedure_reported(sources),
        imaging_measurements=[*study_level, *planar, *volumetric] or [groups.nothing_found()],
        title=coded(IMAGING_MEASUREMENT_REPORT),
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(coded(ENGLISH_US)),
        referenced_images=library,
    )
    root = report[0]
    unplaced = findings.extra.get("unplaced") or {}
    comments = {
        lang: join_sentences(
            (disagreement_comment(findings.findings, findings.flags, lang), unplaced_comment(unplaced, lang)), lang
        )
        for lang in LANGUAGES
    }
    container = impression_container(findings.impression, comments)
    if container is not None:
        root.ContentSequence.append(container)

    sr = hd.sr.Comprehensive3DSR(
        evidence=[*library, *(seg.dataset for seg in segs)],
        content=root,
        series_instance_uid=ident.uid("sr-series"),
        series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=ident.uid("sr"),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=DRAFT_SERIES_DESCRIPTION,
        contributing_equipment=[contributing_equipment(findings.model, when)],
        specific_character_set=CHARSET,
    )
    copy_study_attributes(sr, sources[0])
    pin_timestamps(sr, when)
    return sr


def _first_of_each_series(sources: Sequence[Dataset]) -> list[Dataset]:
    """The Image Library is always present (dicom-outputs.md): without boxes it lists one image per series."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in sources:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return [sort_series(images)[0] for _, images in sorted(by_series.items())]
