"""UID checks for input from peers, and deterministic UIDs for everything the node derives.

Derived UIDs are ``2.25.<uuid5>`` so that the same job run twice yields the same UIDs (and, with pinned
timestamps, the same bytes). ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` ignores its
entropy sources and is random, so it is never used for derived objects.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable

# PS3.5 9.1: components of digits separated by '.', no leading zeros, at most 64 characters.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

# Namespace of all dicom_agent derived UIDs (uuid5 of the project's name in the URL namespace).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/dicom-agent/dicom_agent")


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid UID; anything else from a peer is refused, never used in a path."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID_RE.fullmatch(value) is not None


def derived_uid(*parts: str) -> str:
    """A deterministic ``2.25.`` UID from the given parts (study UID, model, version, role, revision...)."""
    joined = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(NAMESPACE, joined).int}"


def digest_of_uids(uids: Iterable[str]) -> str:
    """A short stable digest of a set of UIDs, to make a derived UID depend on exactly which inputs it used."""
    h = hashlib.sha256()
    for uid in sorted(uids):
        h.update(uid.encode("ascii"))
        h.update(b"\x00")
    return h.hexdigest()[:32]
