"""Present findings built from the project vocabulary, as the heads would give them (shared by runtime tests)."""

from __future__ import annotations

from typing import Any

from dicom_agent.dicom.codes import Code
from dicom_agent.inference.types import Finding
from dicom_agent.inference.vocabulary import Vocabulary, project_vocabulary

VOCAB: Vocabulary = project_vocabulary()


def finding(label: str, probability: float = 0.9, **fields: Any) -> Finding:
    """A present finding of ``label`` (codes and names from the vocabulary) with the given fields."""
    spec = VOCAB.labels[label]
    return Finding(
        label=label,
        code=Code(*spec.code),
        name_en=spec.name_en,
        name_zh=spec.name_zh,
        probability=probability,
        **({"present": True} | fields),
    )
