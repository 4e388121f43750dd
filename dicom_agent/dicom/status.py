"""Named DIMSE statuses (PS3.4 Annex B.2.3 for C-STORE, PS3.7 C.4), so handlers never return bare literals."""

from enum import IntEnum


class StoreStatus(IntEnum):
    """C-STORE response statuses used by the node."""

    SUCCESS = 0x0000
    # Warnings (PS3.4 B.2.3)
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    # Failures
    REFUSED_OUT_OF_RESOURCES = 0xA700
    REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    CANNOT_UNDERSTAND_MISSING_UID = 0xC001
    CANNOT_UNDERSTAND_BAD_UID = 0xC002
    CANNOT_UNDERSTAND_TOO_LARGE = 0xC003
    PROCESSING_FAILURE = 0x0110


class EchoStatus(IntEnum):
    SUCCESS = 0x0000


def is_success(status: int) -> bool:
    return status == 0x0000


def is_warning(status: int) -> bool:
    return status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF


def is_transient_failure(status: int) -> bool:
    """Out of resources (0xA7xx) and processing failure (0x0110, 0x0213) may clear on a retry."""
    return 0xA700 <= status <= 0xA7FF or status in (0x0110, 0x0213)
