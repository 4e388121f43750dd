"""Pipeline settings not (yet) in ``config.Settings``: read from the settings object if present, else the environment.

Each knob has the same ``DICOM_AGENT_`` name it will have in Settings, so moving it there changes nothing for
users. See docs/pipeline.md, "Settings".
"""

from __future__ import annotations

import os

from dicom_agent.config import Settings

DEFAULTS: dict[str, int | float | str] = {
    "default_queue": "",  # queue for rules with queue: auto; "" = gpu when DEVICE is cuda*, else cpu
    "queue_prefix": "",  # prepended to gpu/cpu/export (to share one broker between installations or tests)
    "infer_time_limit_s": 900.0,  # hard limit of one inference task (soft limit 60 s earlier)
    "encode_time_limit_s": 300.0,
    "export_time_limit_s": 300.0,
    "task_max_retries": 5,  # transient errors, exponential backoff
    "task_retry_base_s": 5.0,
    "job_heartbeat_s": 5.0,  # a running job refreshes its heartbeat this often
    "job_stale_s": 60.0,  # a running job silent this long has lost its worker: it is re-queued
    "job_resend_s": 600.0,  # a queued job not picked up this long is sent again (duplicates are harmless)
    "metrics_port": 0,  # Prometheus HTTP port of a worker/SCP process; 0 = off
}


def _raw(settings: Settings, name: str) -> object:
    if name not in DEFAULTS:
        raise KeyError(name)
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(f"DICOM_AGENT_{name.upper()}")
    return DEFAULTS[name] if value is None or value == "" else value


def knob_str(settings: Settings, name: str) -> str:
    return str(_raw(settings, name))


def knob_float(settings: Settings, name: str) -> float:
    return float(_raw(settings, name))  # type: ignore[arg-type]


def knob_int(settings: Settings, name: str) -> int:
    return int(_raw(settings, name))  # type: ignore[call-overload]
