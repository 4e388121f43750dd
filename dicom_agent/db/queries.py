"""Read-side queries shared by the CLI and the web app."""

from __future__ import annotations

from sqlalchemy import func, select

from dicom_agent.db.orm import Export, Finding, Job, ResultObject, Study
from dicom_agent.db.session import session_scope
from dicom_agent.db.states import ExportState, JobState


def study_table(limit: int = 50) -> list[tuple[object, ...]]:
    """(id, uid, modalities, instances, state, revision, findings, exports done/total, error) per study."""
    with session_scope() as s:
        studies = s.scalars(select(Study).order_by(Study.last_received_at.desc()).limit(limit)).all()
        rows: list[tuple[object, ...]] = []
        for st in studies:
            job = s.scalars(
                select(Job).where(Job.study_id == st.id).order_by(Job.revision.desc(), Job.id.desc()).limit(1)
            ).first()
            n_find = 0
            if job is not None and job.state == JobState.SUCCEEDED:
                n_find = (
                    s.scalar(select(func.count()).select_from(Finding).where(Finding.job_id == job.id, Finding.present))
                    or 0
                )
            total = (
                s.scalar(
                    select(func.count()).select_from(Export).join(ResultObject).where(ResultObject.study_id == st.id)
                )
                or 0
            )
            done = (
                s.scalar(
                    select(func.count())
                    .select_from(Export)
                    .join(ResultObject)
                    .where(ResultObject.study_id == st.id, Export.state == ExportState.DONE)
                )
                or 0
            )
            error = st.error or (job.error if job is not None else None)
            rows.append(
                (
                    st.id,
                    st.study_instance_uid,
                    st.modalities,
                    st.instance_count,
                    st.state,
                    st.revision,
                    n_find,
                    f"{done}/{total}",
                    error,
                )
            )
        return rows
