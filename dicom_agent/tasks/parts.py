"""The other parts of the data flow that the tasks call, imported where they are used (one seam, one place).

- the model adapter (``inference.adapter.load_adapter``): loaded once per worker process and kept warm;
- the outbox (``export.deliveries.publish_results``): encode per destination profile, store, queue exports;
- one delivery (``export.runner.deliver``) for the ``export_object`` task.
"""

from __future__ import annotations

import threading
from typing import Any

from dicom_agent.config import Settings

_adapter: Any = None
_adapter_lock = threading.Lock()


def load_adapter(settings: Settings) -> Any:
    from dicom_agent.inference.adapter import load_adapter as _load

    return _load(settings)


def adapter(settings: Settings) -> Any:
    """The process's model adapter, loaded on first use (the worker loads it at process start)."""
    global _adapter
    with _adapter_lock:
        if _adapter is None:
            _adapter = load_adapter(settings)
        return _adapter


def publish_results(
    findings: Any,
    sources: list[Any],
    *,
    settings: Settings,
    study_id: int,
    job_id: int,
    revision: int,
    destinations: list[str],
    default_profile: str,
) -> list[int]:
    """Encodes, stores and queues the results in one transaction; returns the export ids (committed)."""
    from dicom_agent.export.deliveries import publish_results as _publish
    from dicom_agent.export.destinations import Destination

    targets = [Destination.parse(text, default_profile) for text in destinations]
    stored = _publish(
        findings, sources, settings=settings, study_id=study_id, job_id=job_id, revision=revision, destinations=targets
    )
    return [export_id for s in stored for export_id in s.export_ids]


def deliver(export_id: int, settings: Settings) -> Any:
    from dicom_agent.export.runner import deliver as _deliver

    return _deliver(export_id, settings)
