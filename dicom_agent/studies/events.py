"""Study completion event: hooks called with the study id after the completion is committed.

The pipeline registers its Celery enqueue here. Hooks run in the sweeper's thread, so they must be quick
(enqueue, do not process). A failing hook is logged and does not stop the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

CompletionHook = Callable[[int], None]

_lock = threading.Lock()
_hooks: list[CompletionHook] = []


def register_completion_hook(fn: CompletionHook) -> CompletionHook:
    """Adds ``fn(study_id)`` to the hooks (once); usable as a decorator."""
    with _lock:
        if fn not in _hooks:
            _hooks.append(fn)
    return fn


def unregister_completion_hook(fn: CompletionHook) -> None:
    with _lock:
        if fn in _hooks:
            _hooks.remove(fn)


def emit_study_completed(study_id: int) -> None:
    with _lock:
        hooks = list(_hooks)
    for hook in hooks:
        try:
            hook(study_id)
        except Exception:
            log.exception("study completion hook %r failed for study %s", hook, study_id)
