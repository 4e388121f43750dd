"""A plain-text dump of an SR content tree, stable across tool versions, for the golden test."""

from __future__ import annotations

from pydicom import Dataset


def _code(seq: object) -> str:
    item = seq[0]  # type: ignore[index]
    return f"({item.CodeValue},{item.CodingSchemeDesignator},{item.CodeMeaning!r})"


def _value(item: Dataset) -> str:
    vt = item.ValueType
    if vt == "CODE":
        return _code(item.ConceptCodeSequence)
    if vt in ("TEXT",):
        return repr(str(item.TextValue))
    if vt == "PNAME":
        return repr(str(item.PersonName))
    if vt == "UIDREF":
        return str(item.UID)
    if vt == "NUM":
        mv = item.MeasuredValueSequence[0]
        return f"{mv.NumericValue} {_code(mv.MeasurementUnitsCodeSequence)}"
    if vt == "SCOORD":
        return f"{item.GraphicType} {[float(v) for v in item.GraphicData]}"
    if vt in ("IMAGE", "COMPOSITE"):
        ref = item.ReferencedSOPSequence[0]
        frames = f" frames={list(ref.ReferencedFrameNumber)}" if "ReferencedFrameNumber" in ref else ""
        seg = f" segment={ref.ReferencedSegmentNumber}" if "ReferencedSegmentNumber" in ref else ""
        return f"{ref.ReferencedSOPClassUID} {ref.ReferencedSOPInstanceUID}{frames}{seg}"
    if vt == "CONTAINER":
        return str(item.get("ContinuityOfContent", ""))
    return "?"


def dump_tree(ds: Dataset) -> str:
    lines = [f"CONTAINER {_code(ds.ConceptNameCodeSequence)}"]

    def walk(items: object, depth: int) -> None:
        for item in items:  # type: ignore[attr-defined]
            name = _code(item.ConceptNameCodeSequence) if "ConceptNameCodeSequence" in item else "-"
            lines.append(f"{'  ' * depth}{item.RelationshipType} {item.ValueType} {name} = {_value(item)}")
            if "ContentSequence" in item:
                walk(item.ContentSequence, depth + 1)

    walk(ds.ContentSequence, 1)
    return "\n".join(lines) + "\n"
