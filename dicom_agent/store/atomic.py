"""Crash-safe writes inside the storage root: temp file → fsync → rename → fsync of the directory.

Paths are derived from hashes of identifiers, never from the identifiers themselves (they come from peers).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class PathOutsideRootError(ValueError):
    """A computed path would leave the storage root; never expected, always refused."""


def hashed_relpath(*identifiers: str, prefix: str = "", suffix: str = ".dcm") -> Path:
    """``<prefix>/ab/cd/<sha256 of the identifiers>.dcm``: fan-out folders, no peer text in the path."""
    digest = hashlib.sha256("\x1f".join(identifiers).encode("utf-8")).hexdigest()
    rel = Path(digest[:2], digest[2:4], digest + suffix)
    return Path(prefix) / rel if prefix else rel


def resolve_inside(root: Path, relpath: Path | str) -> Path:
    """The absolute path of ``relpath`` under ``root``; raises if it would escape the root."""
    root_abs = root.resolve()
    target = (root_abs / relpath).resolve()
    if target != root_abs and root_abs not in target.parents:
        raise PathOutsideRootError(f"{relpath!s} is outside the storage root")
    return target


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(root: Path, relpath: Path | str, data: bytes) -> Path:
    """Writes ``data`` to ``root/relpath`` so that a crash leaves either the old file or the new one."""
    target = resolve_inside(root, relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = resolve_inside(root, ".tmp")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="w-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target
