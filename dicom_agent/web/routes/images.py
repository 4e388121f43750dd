"""Rendered PNGs of stored images and of segmentation masks.

The file is always found through the database row (instance or result object of this study); the URL carries only
integer ids, so a request cannot name a path.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import func, select

from dicom_agent.db.orm import Finding, Instance
from dicom_agent.web import masks
from dicom_agent.web.deps import AppSettings, CurrentUser, Db
from dicom_agent.web.render import OVERLAY_COLORS, RenderError, mask_png, render_png
from dicom_agent.web.study_view import parse_box, result_object, storage_path

log = logging.getLogger(__name__)
router = APIRouter(tags=["images"])
Preset = Literal["default", "lung", "mediastinum", "bone", "suv"]
CACHE = {"Cache-Control": "private, max-age=3600"}


def _instance(db: Db, study_id: int, instance_id: int) -> Instance:
    inst = db.get(Instance, instance_id)
    if inst is None or inst.study_id != study_id:
        raise HTTPException(status_code=404, detail="image not found")
    return inst


@router.get("/studies/{study_id}/instances/{instance_id}/frames/{frame}.png")
async def frame_png(
    study_id: int,
    instance_id: int,
    frame: int,
    db: Db,
    user: CurrentUser,
    settings: AppSettings,
    preset: Preset = "default",
) -> Response:
    inst = _instance(db, study_id, instance_id)
    path = storage_path(settings.storage_dir, inst.path)
    if path is None or not path.is_file():
        raise HTTPException(status_code=404, detail="image file missing")
    if not 1 <= frame <= (inst.number_of_frames or 1):
        raise HTTPException(status_code=404, detail="no such frame")
    try:
        data = await run_in_threadpool(render_png, path, frame, preset)
    except RenderError as exc:
        log.warning("instance %s not renderable: %s", inst.id, exc)
        raise HTTPException(status_code=422, detail="image cannot be rendered") from exc
    return Response(data, media_type="image/png", headers=CACHE)


@router.get("/studies/{study_id}/findings/{finding_id}/mask/{instance_id}/{frame}.png")
async def finding_mask_png(
    study_id: int,
    finding_id: int,
    instance_id: int,
    frame: int,
    db: Db,
    user: CurrentUser,
    settings: AppSettings,
    color: Annotated[int, Query(ge=0, le=len(OVERLAY_COLORS) - 1)] = 0,
) -> Response:
    finding = db.get(Finding, finding_id)
    if finding is None or finding.study_id != study_id:
        raise HTTPException(status_code=404, detail="finding not found")
    inst = _instance(db, study_id, instance_id)
    seg = result_object(db, finding.job_id, "seg")
    path = storage_path(settings.storage_dir, seg.path) if seg else None
    if path is None or not path.is_file():
        raise HTTPException(status_code=404, detail="no segmentation")
    segment = masks.segment_for(path, finding.tracking_uid, finding.label, finding.name_en)
    if segment is None:
        raise HTTPException(status_code=404, detail="no segment for this finding")
    mask = masks.mask_for(path, segment, inst.sop_instance_uid, frame)
    if mask is None:
        raise HTTPException(status_code=404, detail="no mask on this image")
    siblings = db.scalar(
        select(func.count(Finding.id)).where(
            Finding.job_id == finding.job_id, Finding.label == finding.label, Finding.present.is_(True)
        )
    )
    if (siblings or 0) > 1:
        # The SEG has one segment per label: show only the part inside this finding's own boxes on this image.
        boxes = [b for b in (parse_box(r) for r in finding.boxes or [] if isinstance(r, dict)) if b]
        mask = masks.clip_to_boxes(
            mask, [b for b in boxes if b["sop"] == inst.sop_instance_uid and b["frame"] == frame]
        )
    data = await run_in_threadpool(mask_png, mask, color)
    return Response(data, media_type="image/png", headers=CACHE)
