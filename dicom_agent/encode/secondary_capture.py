"""The ``key-images`` profile: Secondary Capture images with the boxes burned in, for PACS that cannot show SR.

Each source image carrying a box becomes an 8-bit RGB SC image (PS3.3 A.8.1): the source windowed to 8 bits,
scaled up so that the text is legible, boxes drawn in yellow, the finding name beside each, and a red
NOT FOR DIAGNOSIS banner. BurnedInAnnotation is YES. The optional GSPS (dicom-outputs.md item 5) is only a
convenience copy of the boxes on the source image for legacy viewers, never the result of record.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom import Dataset

from dicom_agent.encode.equipment import CHARSET, contributing_equipment, device_serial
from dicom_agent.encode.identity import SERIES_NUMBER, ResultIdentity, copy_study_attributes, pin_timestamps
from dicom_agent.encode.objects import EncodedObject
from dicom_agent.inference.types import Box, Finding, StudyFindings

BANNER = "NOT FOR DIAGNOSIS - AI RESULT (UNVERIFIED)"
MIN_SIDE = 512  # small sources are scaled up so the banner and labels stay legible


def windowed_uint8(ds: Dataset) -> np.ndarray:
    """The source image as 8 bits: its first window if it has one, else the full range."""
    pixels = ds.pixel_array.astype(np.float64)
    if pixels.ndim == 3:  # multi-frame: the caller picks the frame
        pixels = pixels[0]
    pixels = pixels * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, Sequence) else center)
        w = max(float(width[0] if isinstance(width, Sequence) else width), 1.0)
        lo, hi = c - w / 2, c + w / 2
    else:
        lo, hi = float(pixels.min()), float(pixels.max())
    scaled = np.clip((pixels - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 255 - scaled
    return scaled.astype(np.uint8)


def burn_in(ds: Dataset, boxes: list[tuple[Finding, Box]]) -> np.ndarray:
    """An RGB array of the source with boxes, labels and the banner drawn in."""
    gray = windowed_uint8(ds)
    scale = max(1, int(np.ceil(MIN_SIDE / max(gray.shape))))
    size = (gray.shape[1] * scale, gray.shape[0] * scale)
    image = Image.fromarray(gray, mode="L").resize(size, Image.Resampling.NEAREST)
    banner_h = 16
    canvas = Image.new("RGB", (image.width, image.height + banner_h), (0, 0, 0))
    canvas.paste(image.convert("RGB"), (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, canvas.width - 1, banner_h - 1], fill=(160, 0, 0))
    draw.text((4, 2), BANNER, fill=(255, 255, 255))
    for finding, box in boxes:
        x0, y0 = box.x0 * scale, box.y0 * scale + banner_h
        x1, y1 = box.x1 * scale, box.y1 * scale + banner_h
        draw.rectangle([x0, y0, x1, y1], outline=(255, 220, 0), width=2)
        draw.text(
            (x0 + 2, max(banner_h, y0 - 12)), f"{finding.name_en} {100 * finding.probability:.0f}%", fill=(255, 220, 0)
        )
    return np.asarray(canvas, dtype=np.uint8)


def patient_orientation(ds: Dataset) -> tuple[str, str]:
    """Row and column directions (PS3.3 C.7.6.1.1.1): the source's, or derived from its orientation cosines."""
    if "PatientOrientation" in ds and len(ds.PatientOrientation) == 2:
        return str(ds.PatientOrientation[0]), str(ds.PatientOrientation[1])
    cosines = ds.get("ImageOrientationPatient")
    if cosines is None:
        return ("", "")
    return _direction(cosines[:3]), _direction(cosines[3:])


def _direction(vector: Sequence[float]) -> str:
    """Letters of the main axes a direction points along (L/R, P/A, H/F), strongest first."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    ordered = sorted(range(3), key=lambda i: -abs(float(vector[i])))
    return "".join(letters[i][0 if float(vector[i]) > 0 else 1] for i in ordered if abs(float(vector[i])) > 0.25)


def _boxes_by_image(findings: StudyFindings) -> dict[str, list[tuple[Finding, Box]]]:
    out: dict[str, list[tuple[Finding, Box]]] = {}
    for finding in findings.present:
        for box in finding.boxes:
            out.setdefault(box.image.sop_instance_uid, []).append((finding, box))
    return out


def build_key_images(
    findings: StudyFindings,
    sources: Sequence[Dataset],
    ident: ResultIdentity,
    when: datetime,
    manufacturer: str,
    with_gsps: bool = False,
) -> list[EncodedObject]:
    """One SC image per source image that carries a box (and one GSPS over those sources if asked)."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    per_image = _boxes_by_image(findings)
    objects: list[EncodedObject] = []
    for number, (uid, boxes) in enumerate(sorted(per_image.items()), start=1):
        source = by_uid.get(uid)
        if source is None:
            continue
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=burn_in(source, boxes),
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=ident.uid("sc-series"),
            series_number=SERIES_NUMBER["sc"],
            sop_instance_uid=ident.uid("sc", uid),
            instance_number=number,
            manufacturer=manufacturer,
            patient_orientation=patient_orientation(source),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            contributing_equipment=[contributing_equipment(findings.model, when)],
            specific_character_set=CHARSET,
            series_description="AI Key Images - NOT FOR DIAGNOSIS",
        )
        sc.BurnedInAnnotation = "YES"
        sc.Laterality = ""  # type 2C: unknown for a derived picture of the chest
        sc.ImageComments = "AI result, unverified. Not for diagnosis."
        sc.ConversionType = "WSD"
        copy_study_attributes(sc, source)
        pin_timestamps(sc, when)
        objects.append(EncodedObject.of("sc", sc))
    if with_gsps and per_image:
        objects.append(
            EncodedObject.of(
                "gsps",
                build_gsps(
                    findings,
                    [by_uid[u] for u in sorted(per_image) if u in by_uid],
                    per_image,
                    ident,
                    when,
                    manufacturer,
                ),
            )
        )
    return objects


def build_gsps(
    findings: StudyFindings,
    images: list[Dataset],
    per_image: dict[str, list[tuple[Finding, Box]]],
    ident: ResultIdentity,
    when: datetime,
    manufacturer: str,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """Closed POLYLINE graphic objects in PIXEL units on each source image (a legacy-viewer copy of the boxes)."""
    layer = hd.pr.GraphicLayer(layer_name="AI_BOXES", order=1, description="AI findings (unverified)")
    annotations = []
    for ds in images:
        objects = [
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array(box.polyline(), dtype=float),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            )
            for _, box in per_image[str(ds.SOPInstanceUID)]
        ]
        texts = [
            hd.pr.TextObject(
                text_value=f"{finding.name_en} {100 * finding.probability:.0f}%"[:64],
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(box.x0, box.y0),
                anchor_point_visible=False,
            )
            for finding, box in per_image[str(ds.SOPInstanceUID)]
        ]
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[ds], graphic_layer=layer, graphic_objects=objects, text_objects=texts
            )
        )
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=images,
        series_instance_uid=ident.uid("gsps-series"),
        series_number=SERIES_NUMBER["gsps"],
        sop_instance_uid=ident.uid("gsps"),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=findings.model.name[:64],
        software_versions=findings.model.version[:64],
        device_serial_number=device_serial(findings.model),
        content_label="AI_BOXES",
        content_description="AI boxes (unverified)",
        graphic_annotations=annotations,
        graphic_layers=[layer],
        contributing_equipment=[contributing_equipment(findings.model, when)],
        specific_character_set=CHARSET,
    )
    if "BodyPartExamined" in images[0]:
        gsps.BodyPartExamined = images[0].BodyPartExamined  # dciodvfy requires it when the source has it
    copy_study_attributes(gsps, images[0])
    pin_timestamps(gsps, when)
    return gsps
