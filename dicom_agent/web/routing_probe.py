"""Admin "routing rule test": runs the pipeline's routing rules (``routing.engine.decide``) on hand-entered study
facts, or on a stored study's facts, and shows the decision with its trace — nothing is queued."""

from __future__ import annotations

from typing import Any

from dicom_agent.config import Settings
from dicom_agent.errors import DicomAgentError


def probe(settings: Settings, form: dict[str, str]) -> dict[str, Any]:
    from dicom_agent.routing.engine import decide
    from dicom_agent.routing.facts import SeriesFacts, StudyFacts, facts_from_db
    from dicom_agent.routing.rules import load_rules

    try:
        rules = load_rules(settings.routing_file)
    except DicomAgentError as exc:
        return {"error": str(exc)}
    study_id = form.get("study_id", "").strip()
    if study_id:
        if not study_id.isdigit():
            return {"error": "study id must be a number"}
        try:
            facts = facts_from_db(int(study_id), settings.storage_dir, settings.database_url)
        except LookupError as exc:
            return {"error": str(exc)}
    else:
        count = form.get("instances", "").strip()
        series = SeriesFacts(
            series_instance_uid="2.25.1",
            modality=form.get("modality", "").strip().upper(),
            body_part=form.get("body_part", "").strip().upper(),
            description=form.get("series_description", "").strip(),
            image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
            instance_count=int(count) if count.isdigit() else 1,
            orientation="axial" if form.get("modality", "").strip().upper() in ("CT", "PT") else None,
        )
        calling = form.get("calling_ae", "").strip()
        facts = StudyFacts(
            study_instance_uid="2.25.1",
            study_description=form.get("description", "").strip(),
            calling_aes=frozenset({calling}) if calling else frozenset(),
            series=(series,),
        )
    return decide(rules, facts).detail()
