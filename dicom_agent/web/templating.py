"""Jinja2 templates (autoescape on for every .html) and the context every page gets: language, user, CSRF token."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from dicom_agent.web.i18n import LANG_COOKIE, normalize_language, translator

TEMPLATE_DIR = Path(__file__).parent / "templates"


def request_language(request: Request) -> str:
    return normalize_language(request.cookies.get(LANG_COOKIE))


def _page_context(request: Request) -> dict[str, Any]:
    lang = request_language(request)
    session = getattr(request.state, "session", {}) or {}
    return {
        "lang": lang,
        "t": translator(lang),
        "user": getattr(request.state, "user", None),
        "csrf_token": session.get("csrf", ""),
    }


AGE_UNITS = {"en": (" s", " min", " h", " d"), "zh": (" 秒", " 分钟", " 小时", " 天")}


def format_age(since: datetime | None, lang: str = "en", now: datetime | None = None) -> str:
    """``3 min``, ``2 h 5 min``, ``4 d`` (``2 小时 5 分钟`` in Chinese) — how long a study has waited."""
    if since is None:
        return ""
    s, m, h, d = AGE_UNITS.get(lang, AGE_UNITS["en"])
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - since).total_seconds()))
    if seconds < 60:
        return f"{seconds}{s}"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}{m}"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}{h} {minutes}{m}" if minutes else f"{hours}{h}"
    return f"{hours // 24}{d}"


def format_dicom_date(value: str | None) -> str:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def format_person_name(value: str | None) -> str:
    """DICOM PN ``Family^Given^Middle`` → ``Family, Given Middle`` (ideographic groups after ``=`` kept apart)."""
    if not value:
        return ""
    groups = value.split("=")
    parts = [p for p in groups[0].split("^") if p]
    text = parts[0] if parts else ""
    if len(parts) > 1:
        text += ", " + " ".join(parts[1:])
    ideographic = "".join(groups[1].split("^")) if len(groups) > 1 else ""
    return f"{text} ({ideographic})" if ideographic and text else text or ideographic


def format_time(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


templates = Jinja2Templates(directory=str(TEMPLATE_DIR), context_processors=[_page_context])
templates.env.autoescape = True  # every template, whatever its extension
templates.env.filters["age"] = format_age
templates.env.filters["dicom_date"] = format_dicom_date
templates.env.filters["person_name"] = format_person_name
templates.env.filters["ts"] = format_time


def render(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context or {}, status_code=status_code)
