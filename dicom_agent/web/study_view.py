"""Everything the study page shows, gathered from the database (and the draft SR for the AI report text).

File paths always come from database rows (``Instance.path``, ``ResultObject.path``, relative to the storage
root) and are resolved with ``resolve_inside``: nothing a request carries becomes part of a path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_agent.db.orm import Finding, Instance, Job, ResultObject, Review, Series, Study, User
from dicom_agent.db.states import JobState, ReviewState
from dicom_agent.inference.agreement import DECODER_FLAG, split_flag
from dicom_agent.inference.types import LANGUAGES
from dicom_agent.inference.vocabulary import project_vocabulary
from dicom_agent.store.atomic import PathOutsideRootError, resolve_inside
from dicom_agent.tasks.artifacts import load_findings_doc
from dicom_agent.web import masks
from dicom_agent.web.render import OVERLAY_COLORS, presets_for

log = logging.getLogger(__name__)
NON_IMAGE_MODALITIES = {"SR", "SEG", "KO", "PR", "REG", "RTSTRUCT", "DOC"}
IMPRESSION_CODE = "121073"
LANGUAGE_MODIFIER = "121049"


@dataclass
class SliceRef:
    instance_id: int
    frame: int
    sop_instance_uid: str
    rows: int
    columns: int


@dataclass
class FindingView:
    row: Finding
    color: int
    boxes: list[dict[str, Any]]
    mask_segment: int | None
    mask_sops: set[str]
    decision: dict[str, Any] | None

    @property
    def effective_label(self) -> str:
        return str((self.decision or {}).get("label") or self.row.label)

    @property
    def effective_location(self) -> str:
        return str((self.decision or {}).get("location") or self.row.location or "")

    @property
    def status(self) -> str:
        return str((self.decision or {}).get("decision") or "pending")

    @property
    def decoder_notes(self) -> list[tuple[str, str]]:
        """(kind, LANG) of each decoder/heads disagreement on this finding, e.g. ("decoder_omits", "EN")."""
        return decoder_flags(self.row.flags or [])


def decoder_flags(flags: list[str]) -> list[tuple[str, str]]:
    notes = []
    for flag in flags:
        kind, lang, _ = split_flag(flag)
        if kind.startswith(DECODER_FLAG) and lang:
            notes.append((kind, lang.upper()))
    return notes


@dataclass
class StudyView:
    study: Study
    series: list[Series]
    current_series: Series | None
    slices: list[SliceRef]
    start_index: int
    presets: list[str]
    job: Job | None
    findings: list[FindingView]
    review: Review | None
    draft_text: dict[str, str]
    seg: ResultObject | None
    draft_sr: ResultObject | None
    signed: ResultObject | None = None
    reviewer: User | None = None
    overlay_data: dict[str, Any] = field(default_factory=dict)
    decoder_adds: list[tuple[str, str, str]] = field(default_factory=list)  # (LANG, name EN, name ZH)
    unplaced: list[tuple[str, str, float]] = field(default_factory=list)  # (name EN, name ZH, probability)

    @property
    def review_state(self) -> str:
        return self.review.state if self.review else ReviewState.NEW.value

    @property
    def closed(self) -> bool:
        return self.review_state in (ReviewState.SIGNED, ReviewState.REJECTED)

    def report_text(self, lang: str) -> str:
        if self.review is not None:
            saved = self.review.report_en if lang == "en" else self.review.report_zh
            if saved is not None:
                return saved
        return self.draft_text.get(lang, "")


def storage_path(storage_dir: Path, relpath: str) -> Path | None:
    try:
        return resolve_inside(storage_dir, relpath)
    except PathOutsideRootError:
        log.error("database path escapes the storage root; refusing to read it")
        return None


def parse_box(raw: dict[str, Any]) -> dict[str, Any] | None:
    """A box of ``Finding.boxes``: ``{"sop_instance_uid", "frame", "xy": [x0, y0, x1, y1]}`` as the pipeline stores
    it (``x0``…``y1`` keys and a nested ``image`` are accepted too); source pixel coordinates (SCOORD)."""
    nested = raw.get("image")
    image: dict[str, Any] = nested if isinstance(nested, dict) else {}
    uid = raw.get("sop_instance_uid") or image.get("sop_instance_uid")
    xy = raw.get("xy")
    corners: list[Any] = xy if isinstance(xy, list) else [raw.get(k) for k in ("x0", "y0", "x1", "y1")]
    try:
        x0, y0, x1, y1 = (float(v) for v in corners)
    except (TypeError, ValueError):
        return None
    if not uid:
        return None
    frame = raw.get("frame") or raw.get("frame_number") or image.get("frame_number") or 1
    return {"sop": str(uid), "frame": int(frame), "x0": x0, "y0": y0, "x1": x1, "y1": y1}


def current_job(db: Session, study_id: int) -> Job | None:
    return db.scalar(
        select(Job)
        .where(Job.study_id == study_id, Job.state == JobState.SUCCEEDED)
        .order_by(Job.revision.desc(), Job.id.desc())
        .limit(1)
    )


def latest_review(db: Session, study_id: int, job_id: int | None) -> Review | None:
    stmt = select(Review).where(Review.study_id == study_id)
    if job_id is not None:
        stmt = stmt.where(Review.job_id == job_id)
    return db.scalar(stmt.order_by(Review.id.desc()).limit(1))


def result_object(db: Session, job_id: int | None, kind: str) -> ResultObject | None:
    if job_id is None:
        return None
    return db.scalar(
        select(ResultObject)
        .where(ResultObject.job_id == job_id, ResultObject.kind == kind)
        .order_by(ResultObject.id.desc())
        .limit(1)
    )


def draft_impressions(path: Path) -> dict[str, str]:
    """Impression TEXT items of the draft SR per language (``zh`` when tagged zh-CN, else ``en``)."""
    texts: dict[str, str] = {}
    try:
        ds = pydicom.dcmread(path)
    except Exception:  # an unreadable draft only loses the prefill, the review goes on
        log.warning("draft SR could not be read for the report prefill")
        return texts

    def walk(items: Any) -> None:
        for item in items or []:
            names = item.get("ConceptNameCodeSequence") or []
            if item.get("ValueType") == "TEXT" and names and names[0].CodeValue == IMPRESSION_CODE:
                lang = "en"
                for child in item.get("ContentSequence", []):
                    cn = child.get("ConceptNameCodeSequence") or []
                    code = child.get("ConceptCodeSequence") or []
                    if cn and cn[0].CodeValue == LANGUAGE_MODIFIER and code:
                        lang = "zh" if str(code[0].CodeValue).lower().startswith("zh") else "en"
                texts.setdefault(lang, str(item.TextValue))
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return texts


def draft_text_for(draft_path: Path | None, findings: list[Finding]) -> dict[str, str]:
    """The AI report per language: the draft SR's impressions, else the present findings' sentences."""
    texts: dict[str, str] = {}
    if draft_path is not None and draft_path.is_file():
        texts = draft_impressions(draft_path)
    for lang in LANGUAGES:
        if not texts.get(lang):
            sentences = [getattr(f, f"text_{lang}") for f in findings if f.present]
            texts[lang] = " ".join(s for s in sentences if s)
    return texts


def _findings_doc(storage_dir: Path, study: Study, job: Job | None) -> dict[str, Any]:
    """The job's findings artefact (study-level facts that have no ``finding`` row), or {} when there is none
    (older job) or it cannot be read."""
    if job is None:
        return {}
    try:
        return load_findings_doc(storage_dir, study.study_instance_uid, job.id)
    except (OSError, ValueError, PathOutsideRootError):
        return {}


def decoder_additions(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Findings the decoder's narrative states but the heads did not find (the job's ``decoder_adds`` flags)."""
    vocabulary = project_vocabulary()
    out = []
    for flag in doc.get("flags") or []:
        kind, lang, label = split_flag(flag)
        if kind != "decoder_adds" or not label:
            continue
        spec = vocabulary.labels.get(label)
        out.append((lang.upper(), spec.name_en if spec else label, spec.name_zh if spec else label))
    return out


def unplaced_labels(doc: dict[str, Any]) -> list[tuple[str, str, float]]:
    """Labels the classifier called present that no region was given (``extra["unplaced"]``, bundle 0.10.2):
    (name EN, name ZH, probability), most probable first. Not findings; the radiologist should still know."""
    unplaced = (doc.get("extra") or {}).get("unplaced") or {}
    rows = [
        (str(e.get("name_en") or key), str(e.get("name_zh") or key), float(e.get("probability", 0.0)))
        for key, e in unplaced.items()
        if isinstance(e, dict)
    ]
    return sorted(rows, key=lambda row: -row[2])


def _slices(db: Session, series: Series) -> list[SliceRef]:
    rows = db.scalars(
        select(Instance).where(Instance.series_id == series.id).order_by(Instance.instance_number, Instance.id)
    ).all()
    out: list[SliceRef] = []
    for inst in rows:
        for frame in range(1, (inst.number_of_frames or 1) + 1):
            out.append(SliceRef(inst.id, frame, inst.sop_instance_uid, inst.rows or 0, inst.columns or 0))
    return out


def build_study_view(db: Session, storage_dir: Path, study: Study, series_id: int | None) -> StudyView:
    all_series = db.scalars(select(Series).where(Series.study_id == study.id).order_by(Series.series_number)).all()
    image_series = [s for s in all_series if (s.modality or "") not in NON_IMAGE_MODALITIES]
    job = current_job(db, study.id)
    doc = _findings_doc(storage_dir, study, job)
    review = latest_review(db, study.id, job.id if job else None)
    decisions: dict[str, Any] = (review.decisions or {}) if review else {}
    seg = result_object(db, job.id if job else None, "seg")
    draft = result_object(db, job.id if job else None, "sr")
    seg_path = storage_path(storage_dir, seg.path) if seg else None
    if seg_path is not None and not seg_path.is_file():
        seg_path = None

    findings: list[FindingView] = []
    rows = (
        db.scalars(
            select(Finding).where(Finding.job_id == job.id).order_by(Finding.present.desc(), Finding.probability.desc())
        ).all()
        if job
        else []
    )
    shared = {f.label for f in rows if f.present and sum(1 for g in rows if g.present and g.label == f.label) > 1}
    for i, f in enumerate(rows):
        boxes = [b for b in (parse_box(raw) for raw in (f.boxes or []) if isinstance(raw, dict)) if b]
        segment = None
        sops: set[str] = set()
        if seg_path is not None and f.present:
            try:
                segment = masks.segment_for(seg_path, f.tracking_uid, f.label, f.name_en)
                if segment is not None:
                    sops = masks.sources_with_mask(seg_path, segment)
                    if f.label in shared:  # one SEG segment per label: keep the images of this finding's boxes
                        sops &= {b["sop"] for b in boxes}
            except Exception:  # a broken SEG hides the mask overlay, not the page
                log.warning("SEG of job %s could not be indexed", job.id if job else None)
        findings.append(FindingView(f, i % len(OVERLAY_COLORS), boxes, segment, sops, decisions.get(str(f.id))))

    by_id = {s.id: s for s in image_series}
    current = by_id.get(series_id) if series_id else None
    if current is None:
        # Open on the series that holds the top finding's evidence.
        wanted = {b["sop"] for fv in findings if fv.row.present for b in fv.boxes} | {
            uid for fv in findings for uid in fv.mask_sops
        }
        if wanted:
            hit = db.scalar(select(Instance.series_id).where(Instance.sop_instance_uid.in_(wanted)).limit(1))
            current = by_id.get(hit) if hit else None
        current = current or (image_series[0] if image_series else None)
    slices = _slices(db, current) if current else []
    start = len(slices) // 2
    top = next((fv for fv in findings if fv.row.present and (fv.boxes or fv.mask_sops)), None)
    if top is not None:
        targets = [(b["sop"], b["frame"]) for b in top.boxes] or [(uid, 1) for uid in top.mask_sops]
        for idx, s in enumerate(slices):
            if (s.sop_instance_uid, s.frame) in targets:
                start = idx
                break

    draft_text = draft_text_for(storage_path(storage_dir, draft.path) if draft else None, list(rows))
    signed = db.get(ResultObject, review.signed_object_id) if review and review.signed_object_id else None
    view = StudyView(
        study=study,
        series=list(image_series),
        current_series=current,
        slices=slices,
        start_index=start,
        presets=presets_for(current.modality or "") if current else ["default"],
        job=job,
        findings=findings,
        review=review,
        draft_text=draft_text,
        seg=seg if seg_path else None,
        draft_sr=draft,
        signed=signed,
        reviewer=db.get(User, review.user_id) if review and review.user_id else None,
        decoder_adds=decoder_additions(doc),
        unplaced=unplaced_labels(doc),
    )
    view.overlay_data = {
        "study": study.id,
        "slices": [
            {"i": s.instance_id, "f": s.frame, "sop": s.sop_instance_uid, "r": s.rows, "c": s.columns} for s in slices
        ],
        "start": start,
        "findings": [
            {
                "id": fv.row.id,
                "color": fv.color,
                "boxes": fv.boxes,
                "mask": fv.mask_segment is not None,
                "maskSops": sorted(fv.mask_sops),
                "on": fv.row.present and fv.status != "reject",
            }
            for fv in findings
        ],
    }
    return view
