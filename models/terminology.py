"""The label set and anatomic vocabulary of the bundled model: the single source of truth.

Every finding the phantoms draw, the model predicts, the SR encodes and the reports name comes from here.
Codes are SNOMED CT (scheme ``SCT``) with the standard's code meanings, so they can go straight into a
TID 1500 SR (PS3.16) as Finding / Finding Site concepts. Laterality is kept apart from the site (PS3.16
TID 1410 "Finding Site" with a "Laterality" modifier, CID 244) for sites that are not lateral by themselves.

Image orientation reminder: on a PA chest radiograph the image LEFT is the patient's RIGHT; on an axial CT/PET
slice displayed with ImageOrientationPatient (1,0,0,0,1,0) the image left (low column index) is also the
patient's right.
"""

from __future__ import annotations

from dataclasses import dataclass

CodeTuple = tuple[str, str, str]  # (code value, coding scheme designator, code meaning)


@dataclass(frozen=True)
class Label:
    """One finding class of the model."""

    key: str
    code: CodeTuple
    name_en: str
    name_zh: str
    modalities: tuple[str, ...]  # subset of ("CR", "DX", "CT", "PT")
    critical: bool  # needs prompt attention (worklist priority)
    focal: bool  # has boxes (TID 1410); non-focal findings are study-level (TID 1501) with an optional mask
    outlined: bool = True  # has a mask (SEG segment, sides); not cardiomegaly, a size of the whole heart


@dataclass(frozen=True)
class Location:
    """An anatomic site a finding can lie in (Finding Site), with its laterality if it has one."""

    key: str
    name_en: str
    name_zh: str
    laterality: str | None  # "right" | "left" | None
    code: CodeTuple


_XR = ("CR", "DX")

LABELS: dict[str, Label] = {
    label.key: label
    for label in (
        Label("nodule", ("27925004", "SCT", "Nodule"), "nodule", "结节", (*_XR, "CT"), False, True),
        Label("mass", ("4147007", "SCT", "Mass"), "mass", "肿块", (*_XR, "CT"), False, True),
        Label(
            "consolidation",
            ("95436008", "SCT", "Lung consolidation"),
            "consolidation",
            "实变",
            (*_XR, "CT"),
            False,
            True,
        ),
        Label(
            "pleural_effusion",
            ("60046008", "SCT", "Pleural effusion"),
            "pleural effusion",
            "胸腔积液",
            (*_XR, "CT"),
            False,
            False,
        ),
        Label("pneumothorax", ("36118008", "SCT", "Pneumothorax"), "pneumothorax", "气胸", _XR, True, False),
        Label("cardiomegaly", ("8186001", "SCT", "Cardiomegaly"), "cardiomegaly", "心影增大", _XR, False, False, False),
        # No SNOMED CT concept for an "FDG-avid lesion" could be verified offline: the finding is coded as Lesion
        # and the modality (PT, FDG) carries the "hypermetabolic" meaning. The names say what the reports say.
        Label(
            "hypermetabolic_lesion",
            ("52988006", "SCT", "Lesion"),
            "hypermetabolic lesion",
            "高代谢病灶",
            ("PT",),
            False,
            True,
        ),
    )
}

LATERALITY_CODES: dict[str, CodeTuple] = {
    "right": ("24028007", "SCT", "Right"),
    "left": ("7771000", "SCT", "Left"),
    "bilateral": ("51440002", "SCT", "Right and left"),
}
LATERALITY_ZH: dict[str, str] = {"right": "右侧", "left": "左侧", "bilateral": "双侧"}

LOCATIONS: dict[str, Location] = {
    loc.key: loc
    for loc in (
        Location(
            "right_upper_lobe", "right upper lobe", "右肺上叶", "right", ("45653009", "SCT", "Upper lobe of right lung")
        ),
        Location(
            "right_middle_lobe",
            "right middle lobe",
            "右肺中叶",
            "right",
            ("72481006", "SCT", "Middle lobe of right lung"),
        ),
        Location(
            "right_lower_lobe", "right lower lobe", "右肺下叶", "right", ("266005", "SCT", "Lower lobe of right lung")
        ),
        Location(
            "left_upper_lobe", "left upper lobe", "左肺上叶", "left", ("44714003", "SCT", "Upper lobe of left lung")
        ),
        Location(
            "left_lower_lobe", "left lower lobe", "左肺下叶", "left", ("90572001", "SCT", "Lower lobe of left lung")
        ),
        Location(
            "right_pleura",
            "right pleura",
            "右侧胸膜",
            "right",
            ("3120008", "SCT", "Pleural membrane structure"),
        ),
        Location("left_pleura", "left pleura", "左侧胸膜", "left", ("3120008", "SCT", "Pleural membrane structure")),
        Location("heart", "heart", "心脏", None, ("80891009", "SCT", "Heart")),
        Location("mediastinum", "mediastinum", "纵隔", None, ("72410000", "SCT", "Mediastinum")),
        Location("liver", "liver", "肝脏", None, ("10200004", "SCT", "Liver")),
    )
}

LUNG_LOBES: tuple[str, ...] = (
    "right_upper_lobe",
    "right_middle_lobe",
    "right_lower_lobe",
    "left_upper_lobe",
    "left_lower_lobe",
)

MODALITY_OF_KIND: dict[str, str] = {"cxr": "DX", "ct": "CT", "pet": "PT"}


def labels_for(kind: str) -> tuple[str, ...]:
    """Label keys a phantom of this kind ("cxr", "ct", "pet") can carry, in LABELS order."""
    modality = MODALITY_OF_KIND[kind]
    return tuple(key for key, label in LABELS.items() if modality in label.modalities)
