"""``ask STUDY_UID "question" [--lang en|zh]``: visual question answering on a study the node has stored.

The study is read from the index and the storage root only (nothing is queued, nothing is written). Its
series are picked by the routing rules, as the pipeline would pick them for inference, unless ``--series``
names them; the model is loaded through the same adapter the worker uses (``MODEL_DIR``, ``DEVICE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dicom_agent.cli.common import fail, out
from dicom_agent.config import Settings
from dicom_agent.inference.types import LANGUAGES, StudyInput


class AskError(Exception):
    """The question cannot be put to this study (unknown UID, no usable series); the message says why."""


def series_by_routing(study_id: int, settings: Settings) -> list[str]:
    """The series the routing rules would hand to the model; an ``ignore`` decision is an error with its reason."""
    from dicom_agent.routing.engine import decide
    from dicom_agent.routing.facts import facts_from_db
    from dicom_agent.tasks.enqueue import rules_for

    decision = decide(rules_for(settings), facts_from_db(study_id, settings.storage_dir, settings.database_url))
    if decision.action != "run" or not decision.series_uids:
        raise AskError(f"the routing rules give the model no series of this study: {decision.reason}")
    return list(decision.series_uids)


def load_study_input(study_uid: str, settings: Settings, series_uids: list[str] | None = None) -> StudyInput:
    """The study's chosen series as absolute file paths inside the storage root, in instance order."""
    from sqlalchemy import select

    from dicom_agent.db.orm import Instance, Series, Study
    from dicom_agent.db.session import session_scope
    from dicom_agent.inference.types import SeriesInput
    from dicom_agent.store.atomic import resolve_inside

    with session_scope(settings.database_url) as s:
        study_id = s.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
    if study_id is None:
        raise AskError(f"unknown study {study_uid} (not in the index)")
    chosen = series_uids or series_by_routing(study_id, settings)
    series_in = []
    with session_scope(settings.database_url) as s:
        for uid in chosen:
            row = s.scalars(
                select(Series).where(Series.series_instance_uid == uid, Series.study_id == study_id)
            ).first()
            if row is None:
                raise AskError(f"series {uid} is not part of study {study_uid}")
            paths = s.scalars(
                select(Instance.path)
                .where(Instance.series_id == row.id)
                .order_by(Instance.instance_number, Instance.id)
            ).all()
            files = [resolve_inside(settings.storage_dir, p) for p in paths]
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise AskError(f"{len(missing)} file(s) of series {uid} are missing from the storage root")
            series_in.append(
                SeriesInput(uid, row.modality or "", files, row.body_part_examined, row.series_description)
            )
    return StudyInput(study_uid, series_in, tuple(settings.languages))


def answer(
    study_uid: str, question: str, lang: str, settings: Settings, series_uids: list[str] | None = None
) -> tuple[str, str | None]:
    """Loads the study and the model; returns the model's answer (stripped) and, for the bundled model, a note
    when the answer contradicts the study's findings of record (the coded findings the SR carries)."""
    from dicom_agent.inference.adapter import load_adapter
    from dicom_agent.inference.bundle_adapter import BundleAdapter

    study = load_study_input(study_uid, settings, series_uids)
    adapter = load_adapter(settings)
    if not isinstance(adapter, BundleAdapter):
        return adapter.ask(study, question, lang).strip(), None
    analysis = adapter.analyse(study)
    text = adapter.answer(analysis, question, lang).strip()
    return text, adapter.check_answer(analysis, question, lang, text)


def ask(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID of a study the node has stored")],
    question: Annotated[str, typer.Argument(help='the question, e.g. "Is there a pleural effusion?"')],
    lang: Annotated[str, typer.Option("--lang", help="language of the answer: en or zh")] = "en",
    series: Annotated[
        list[str] | None, typer.Option("--series", help="ask about this series (repeatable); default: routing rules")
    ] = None,
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="override MODEL_DIR")] = None,
) -> None:
    """Ask the model a question about a stored study (VQA); prints the answer, and on stderr a note when it
    contradicts the study's coded findings."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_agent.config import get_settings
    from dicom_agent.errors import DicomAgentError

    if lang not in LANGUAGES:
        fail(f"--lang must be one of {', '.join(LANGUAGES)}, not {lang!r}")
    if not question.strip():
        fail("the question is empty")
    settings = get_settings()
    if model_dir is not None:
        settings = settings.model_copy(update={"model_dir": model_dir})
    try:
        text, note = answer(study_uid, question, lang, settings, series)
    except AskError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"cannot read the index: {_first_line(exc)}")
    except (DicomAgentError, OSError, ValueError) as exc:
        fail(f"cannot answer about study {study_uid}: {_first_line(exc)}")
    if not text:
        fail("the model gave an empty answer")
    out(text)
    if note:  # on stderr: stdout stays the answer alone, for scripts
        typer.echo(note, err=True)


def _first_line(exc: Exception) -> str:
    """One line for stderr: database and validation errors carry SQL or a multi-line report after it."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def register(app: typer.Typer) -> None:
    app.command()(ask)
