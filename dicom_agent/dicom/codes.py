"""Coded concepts the node writes, in one place. Finding codes come from the model manifest's label set."""

from __future__ import annotations

from typing import NamedTuple


class Code(NamedTuple):
    """A coded concept (code value, coding scheme designator, code meaning), e.g. ``("27925004", "SCT", "Nodule")``."""

    value: str
    scheme: str
    meaning: str


PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("2667000", "SCT", "Absent")
NO_ABNORMALITY_DETECTED = Code("281900007", "SCT", "No abnormality detected")
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
CT_CHEST_PROCEDURE = Code("25045-6", "LN", "CT unspecified body region")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
ENGLISH_US = Code("en-US", "RFC5646", "English (United States)")
CHINESE_SIMPLIFIED = Code("zh-CN", "RFC5646", "Chinese (S)")
