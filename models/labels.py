"""The model's label axis, derived from ``models.terminology`` (the single source of truth for codes/names)."""

from __future__ import annotations

from typing import Any

from models.terminology import LABELS, MODALITY_OF_KIND

KINDS = ("cxr", "ct", "pet")
LABEL_KEYS: tuple[str, ...] = tuple(LABELS)


def kinds_of(key: str) -> tuple[str, ...]:
    """Which phantom kinds (cxr/ct/pet) a label applies to."""
    mods = LABELS[key].modalities
    return tuple(kind for kind in KINDS if MODALITY_OF_KIND[kind] in mods or (kind == "cxr" and "CR" in mods))


def label_entries() -> list[dict[str, Any]]:
    """Manifest ``labels`` entries in model output order (thresholds are added at export)."""
    entries = []
    for key, lab in LABELS.items():
        value, scheme, meaning = lab.code
        entries.append(
            {
                "key": key,
                "code": {"value": value, "scheme": scheme, "meaning": meaning},
                "name_en": lab.name_en,
                "name_zh": lab.name_zh,
                "modalities": list(kinds_of(key)),
                "dicom_modalities": list(lab.modalities),
                "critical": lab.critical,
                "focal": lab.focal,
                "outlined": lab.outlined,
            }
        )
    return entries


def label_mask(kind: str) -> list[bool]:
    """Which label outputs apply to a kind (others are ignored in losses and metrics)."""
    return [kind in kinds_of(key) for key in LABEL_KEYS]
