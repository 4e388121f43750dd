"""The worklist page, its rows fragment (for refresh without reload) and its change token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from dicom_agent.web.deps import CurrentUser, Db
from dicom_agent.web.schemas import WorklistFilters, WorklistVersion
from dicom_agent.web.templating import render
from dicom_agent.web.worklist_query import worklist_page, worklist_version

router = APIRouter(tags=["worklist"])
Filters = Annotated[WorklistFilters, Query()]


@router.get("/", response_class=HTMLResponse)
def worklist(request: Request, db: Db, user: CurrentUser, filters: Filters) -> HTMLResponse:
    page = worklist_page(db, filters)
    return render(request, "worklist.html", {"page": page, "version": worklist_version(db).token})


@router.get("/worklist/rows", response_class=HTMLResponse)
def worklist_rows(request: Request, db: Db, user: CurrentUser, filters: Filters) -> HTMLResponse:
    """The table body and pager only; the page swaps it in when the change token moves."""
    page = worklist_page(db, filters)
    return render(request, "_worklist_rows.html", {"page": page})


@router.get("/worklist/version.json")
def worklist_changes(db: Db, user: CurrentUser) -> WorklistVersion:
    return worklist_version(db)
