"""Decoder text versus the heads: the structured findings are the result of record, the text is checked.

A feasibility run measured a free-running decoder right on finding + location only ~59% of the time, so its
narrative is parsed back (:mod:`parse`) and every disagreement is written into the output as a flag that the
worklist shows: a finding the text omits or places elsewhere (on the :class:`Finding`), and a finding the text
adds that the heads did not find (on the :class:`StudyFindings`).
"""

from __future__ import annotations

from dicom_agent.inference.parse import parse
from dicom_agent.inference.types import Finding
from dicom_agent.inference.vocabulary import Vocabulary

DECODER_FLAG = "decoder_"  # every flag below starts so: "decoder_omits:en", "decoder_adds:zh:mass"


def split_flag(flag: str) -> tuple[str, str, str]:
    """``"decoder_adds:zh:mass"`` -> ``("decoder_adds", "zh", "mass")``; missing parts are empty strings."""
    kind, _, rest = str(flag).partition(":")
    lang, _, label = rest.partition(":")
    return kind, lang, label


def flag_disagreements(findings: list[Finding], text: str, lang: str, vocabulary: Vocabulary) -> list[str]:
    """Adds per-finding flags for ``text`` in ``lang`` and returns the study-level flags."""
    stated = [p for p in parse(text, lang, vocabulary) if not p.negated]
    denied = {p.label for p in parse(text, lang, vocabulary) if p.negated}
    said = {(p.label, vocabulary.where(p.label, p.location, p.laterality)) for p in stated}
    said_labels = {p.label for p in stated}
    study_flags: list[str] = []
    present = [f for f in findings if f.present]
    for finding in present:
        where = vocabulary.where(finding.label, finding.location, finding.laterality)
        if finding.label in denied and finding.label not in said_labels:
            flag = f"decoder_denies:{lang}"
        elif finding.label not in said_labels:
            flag = f"decoder_omits:{lang}"
        elif where is not None and (finding.label, where) not in said:
            flag = f"decoder_location_differs:{lang}"
        else:
            continue
        if flag not in finding.flags:
            finding.flags.append(flag)
    head_labels = {f.label for f in present}
    for label in sorted(said_labels - head_labels):
        study_flags.append(f"decoder_adds:{lang}:{label}")
    if study_flags or any(flag.endswith(f":{lang}") for f in present for flag in f.flags):
        study_flags.insert(0, f"decoder_disagrees:{lang}")
    return study_flags
