"""Logging setup: plain or JSON lines, and a filter that keeps patient identifiers out of every record."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

# Attributes that must never reach a log line (PS3.15 E.1 basic profile, the ones that travel in our code).
_PHI_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "patient_name", "patient_id", "patient_birth_date")
_PHI_RE = re.compile(r"(" + "|".join(_PHI_KEYS) + r")(\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)")


class PhiFilter(logging.Filter):
    """Redacts ``PatientName=...``-style fragments that slip into messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(k in msg for k in _PHI_KEYS):
            record.msg = _PHI_RE.sub(r"\1\2<redacted>", msg)
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("study_id", "job_id", "export_id", "calling_ae", "role"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(PhiFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
