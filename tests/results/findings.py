"""Hand-made StudyFindings for the test sources (the model is not needed to test the encoders)."""

from __future__ import annotations

import numpy as np
from pydicom import Dataset

from dicom_agent.dicom.codes import Code
from dicom_agent.inference.types import Box, Finding, ImageRef, Mask, ModelIdentity, StudyFindings

MODEL = ModelIdentity(
    name="dicom_agent-unified",
    version="0.3.1",
    manufacturer="dicom_agent project",
    bundle_sha256="5f2b" + "0" * 56 + "c0de",
    description="trained on synthetic phantoms; not for clinical use",
)
NODULE = Code("27925004", "SCT", "Nodule")
PNEUMOTHORAX = Code("36118008", "SCT", "Pneumothorax")
PLEURAL_EFFUSION = Code("60046008", "SCT", "Pleural effusion")
EMPHYSEMA = Code("87433001", "SCT", "Pulmonary emphysema")
LUNG = Code("39607008", "SCT", "Lung")
UPPER_LOBE_RIGHT = Code("45653009", "SCT", "Upper lobe of right lung")
HYPERMETABOLIC = Code("RID49674", "RADLEX", "Hypermetabolic lesion")

IMPRESSION_EN = "Solid nodule in the right upper lobe, 8 mm. No pneumothorax. AI draft, not verified."
IMPRESSION_ZH = "右肺上叶实性结节，约8毫米。未见气胸。人工智能草稿，未经核实。"


def ref(ds: Dataset) -> ImageRef:
    return ImageRef(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)


def ct_findings(ct: list[Dataset], with_mask: bool = True, probability: float = 0.87) -> StudyFindings:
    """A nodule with a box on slice 8 and a mask over slices 7-9, emphysema (study level), no pneumothorax."""
    size = int(ct[0].Rows)
    mask = None
    if with_mask:
        pixels = np.zeros((3, size, size), bool)
        pixels[:, 20:28, 38:46] = True
        mask = Mask(ct[0].SeriesInstanceUID, [ref(ct[k]) for k in (6, 7, 8)], pixels)
    nodule = Finding(
        label="nodule",
        code=NODULE,
        name_en="Nodule",
        name_zh="结节",
        probability=probability,
        present=True,
        finding_site=UPPER_LOBE_RIGHT,
        location="right_upper_zone",
        location_en="right upper lobe",
        location_zh="右肺上叶",
        laterality="right",
        size_mm=8.0,
        boxes=[Box(ref(ct[7]), 37.5, 19.5, 46.5, 28.5, score=0.9)],
        mask=mask,
        text_en="Solid nodule in the right upper lobe, 8 mm.",
        text_zh="右肺上叶实性结节，约8毫米。",
    )
    emphysema = Finding("emphysema", EMPHYSEMA, "Emphysema", "肺气肿", 0.62, True, finding_site=LUNG)
    pneumothorax = Finding("pneumothorax", PNEUMOTHORAX, "Pneumothorax", "气胸", 0.03, False, critical=True)
    return StudyFindings(
        study_instance_uid=str(ct[0].StudyInstanceUID),
        model=MODEL,
        findings=[nodule, emphysema, pneumothorax],
        impression={"en": IMPRESSION_EN, "zh": IMPRESSION_ZH},
        series_uids=[str(ct[0].SeriesInstanceUID)],
    )


def dx_findings(dx: Dataset) -> StudyFindings:
    """A left pneumothorax with a box and a mask on the radiograph; the decoder's English narrative omitted it and
    its Chinese one stated an effusion the heads did not find (flags as ``agreement.flag_disagreements`` sets)."""
    size = int(dx.Rows)
    pixels = np.zeros((1, size, size), bool)
    pixels[0, 10:60, 80:120] = True
    finding = Finding(
        label="pneumothorax",
        code=PNEUMOTHORAX,
        name_en="Pneumothorax",
        name_zh="气胸",
        probability=0.91,
        present=True,
        critical=True,
        finding_site=LUNG,
        laterality="left",
        boxes=[Box(ref(dx), 80.0, 10.0, 120.0, 60.0)],
        mask=Mask(dx.SeriesInstanceUID, [ref(dx)], pixels),
        flags=["decoder_omits:en"],
    )
    effusion = Finding("pleural_effusion", PLEURAL_EFFUSION, "Pleural effusion", "胸腔积液", 0.12, False)
    return StudyFindings(
        study_instance_uid=str(dx.StudyInstanceUID),
        model=MODEL,
        findings=[finding, effusion],
        impression={"en": "Left pneumothorax.", "zh": "左侧气胸。"},
        narrative={"en": "No abnormality detected.", "zh": "左侧气胸。左侧胸腔积液。"},
        series_uids=[str(dx.SeriesInstanceUID)],
        flags=["decoder_disagrees:en", "decoder_disagrees:zh", "decoder_adds:zh:pleural_effusion"],
    )


def pet_findings(pet: list[Dataset]) -> StudyFindings:
    """A hypermetabolic lesion with a mask over two slices and no box."""
    size = int(pet[0].Rows)
    pixels = np.zeros((2, size, size), bool)
    pixels[:, 10:14, 18:22] = True
    finding = Finding(
        "hypermetabolic",
        HYPERMETABOLIC,
        "Hypermetabolic lesion",
        "高代谢病灶",
        0.77,
        True,
        mask=Mask(pet[0].SeriesInstanceUID, [ref(pet[3]), ref(pet[4])], pixels),
    )
    return StudyFindings(
        study_instance_uid=str(pet[0].StudyInstanceUID),
        model=MODEL,
        findings=[finding],
        impression={"en": "One hypermetabolic lesion.", "zh": "一处高代谢病灶。"},
        series_uids=[str(pet[0].SeriesInstanceUID)],
    )


def pet_measured_findings(pet: list[Dataset]) -> StudyFindings:
    """A hypermetabolic lesion over slices 3-5 with a box on each, its diameter measured on slice 4 and its
    SUVmax voxel on slice 5 (as ``BundleAdapter`` reports a PET lesion since bundle 0.10.0)."""
    study = pet_findings(pet)
    lesion = study.findings[0]
    lesion.boxes = [Box(ref(pet[k]), 17.0, 9.0, 23.0, 15.0, score=0.8) for k in (3, 4, 5)]
    lesion.size_mm, lesion.size_on = 24.0, 1
    lesion.suv_max, lesion.suv_on = 8.3, 2
    return study
