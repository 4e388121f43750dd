"""Main entry of the encoders: a model run's findings + the source datasets → the DICOM objects to deliver.

Profiles (per destination, dicom-outputs.md "Decisions"): ``full`` = SR + SEG + KOS; ``sr-only`` = the same SR
alone (its TID 1411 groups still name the SEG, which that destination does not get); ``key-images`` = secondary
capture images with the boxes burned in and a NOT FOR DIAGNOSIS banner, for PACS whose viewers cannot render SR;
``key-images+gsps`` adds a GSPS copy of the boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydicom import Dataset

from dicom_agent.encode.identity import ResultIdentity, pinned_time
from dicom_agent.encode.kos import build_kos
from dicom_agent.encode.objects import EncodedObject
from dicom_agent.encode.seg import build_segs
from dicom_agent.encode.sr import build_sr
from dicom_agent.errors import EncodeError
from dicom_agent.inference.types import StudyFindings

PROFILES = ("full", "sr-only", "key-images", "key-images+gsps")
DEFAULT_MANUFACTURER = "dicom_agent"


def encode_study(
    findings: StudyFindings,
    sources: list[Dataset],
    *,
    profile: str = "full",
    revision: int = 0,
    manufacturer: str = DEFAULT_MANUFACTURER,
    created_at: datetime | None = None,
) -> list[EncodedObject]:
    """Encodes one model run. Same inputs (and ``created_at``) ⇒ byte-identical objects with the same UIDs.

    ``sources`` are the source datasets the model used (pixel data only needed for ``key-images``);
    ``created_at`` pins every timestamp (default: the study date/time, never the wall clock);
    ``revision`` must be raised whenever the content changes, which changes every UID.
    """
    if profile not in PROFILES:
        raise EncodeError(f"unknown output profile {profile!r} (one of {', '.join(PROFILES)})")
    if not sources:
        raise EncodeError("no source datasets to encode against")
    study_uids = {str(ds.get("StudyInstanceUID", "")) for ds in sources}
    if study_uids != {findings.study_instance_uid}:
        raise EncodeError("the sources do not all belong to the study of the findings")
    when = pinned_time(created_at, sources)
    ident = ResultIdentity.of(findings.study_instance_uid, sources, findings.model, revision)

    if profile.startswith("key-images"):
        from dicom_agent.encode.secondary_capture import build_key_images

        return build_key_images(findings, sources, ident, when, manufacturer, with_gsps=profile.endswith("+gsps"))

    segs = build_segs(findings.present, sources, ident, findings.model, when, manufacturer)
    sr = build_sr(findings, sources, segs, ident, when, manufacturer)
    objects = [EncodedObject.of("sr", sr)]
    if profile == "sr-only":
        return objects
    objects.extend(EncodedObject.of("seg", seg.dataset) for seg in segs)
    kos = build_kos(findings, sources, ident, when, manufacturer)
    if kos is not None:
        objects.append(EncodedObject.of("kos", kos))
    return objects


def sources_for(findings: StudyFindings, datasets: Sequence[Dataset]) -> list[Dataset]:
    """The datasets of the series the model used (all of them when the findings do not say)."""
    wanted = set(findings.series_uids)
    return [ds for ds in datasets if not wanted or str(ds.SeriesInstanceUID) in wanted]


def finding_tracking_uids(findings: StudyFindings, sources: Sequence[Dataset], *, revision: int = 0) -> list[list[str]]:
    """Per finding (same order as ``findings.findings``), the Tracking UIDs of its SR measurement groups.

    Lets the pipeline record ``finding.tracking_uid`` (the first one) so that the review can reject exactly
    that finding's groups when signing. Mirrors ``sr.build_sr``: a box group per box of a present finding, the
    SEG segment's UID for a present finding with a non-empty mask, else one study-level (TID 1501) group.
    """
    ident = ResultIdentity.of(findings.study_instance_uid, sources, findings.model, revision)
    out: list[list[str]] = []
    for k, finding in enumerate(findings.findings):
        uids: list[str] = []
        masked = (
            finding.present
            and finding.mask is not None
            and bool(finding.mask.pixels.any())
            and not any(ref.frame_number for ref in finding.mask.images)  # seg.build_segs skips those
        )
        if finding.present:
            uids.extend(ident.uid("box", finding.label, str(k), str(j)) for j in range(len(finding.boxes)))
        if masked and finding.mask is not None:
            uids.append(ident.uid("segment", finding.mask.series_instance_uid, finding.label))
        if not (finding.present and finding.boxes) and not masked:
            uids.append(ident.uid("finding", finding.label, str(k)))
        out.append(uids)
    return out
