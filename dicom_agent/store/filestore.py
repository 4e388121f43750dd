"""The storage root: spool files for instances being received, and their durable, hashed final paths.

An instance travels ``<root>/.tmp/spool-<pid>/<random>.dcm`` (written while the peer sends it, hashed and
size-bounded on the way) → fsync → ``os.replace`` to ``<root>/<aa>/<bb>/<sha256(study, series, sop)>.dcm``
→ fsync of the folder. The spool lives inside the root so the rename is atomic (same file system), and the
final path is a hash of the UIDs, never the UIDs themselves: they come from the peer.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dicom_agent.store.atomic import fsync_dir, hashed_relpath, resolve_inside

log = logging.getLogger(__name__)

SPOOL_PREFIX = "spool-"


class SpoolFile:
    """A write-only file that hashes what it is given and stops storing past a byte limit.

    pynetdicom writes a received C-STORE dataset into this object (file meta first, then every P-DATA
    fragment). Past ``limit`` bytes the data is counted and dropped, so a huge or endless dataset costs
    neither memory nor disk; the handler then answers "too large". A write error (disk full) is
    remembered instead of raised, because an exception here would abort the association from inside
    pynetdicom's reader thread without a status for the peer.
    """

    def __init__(self, directory: Path, limit: int) -> None:
        fd, name = tempfile.mkstemp(dir=directory, suffix=".dcm")
        self.name = name
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.limit = limit
        self.size = 0
        self.overflowed = False
        self.write_error: OSError | None = None
        self._sha = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self.size += n
        if self.overflowed or self.write_error is not None:
            return n
        if self.size > self.limit:
            self.overflowed = True
            return n
        try:
            self.file.write(data)
        except OSError as exc:
            self.write_error = exc
            return n
        self._sha.update(data)
        return n

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def fsync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.name)


@dataclass(frozen=True)
class FileStore:
    """Paths and durable moves inside one storage root."""

    root: Path
    min_free_bytes: int = 0

    @classmethod
    def open(cls, root: Path, min_free_bytes: int = 0) -> FileStore:
        root = root.resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(root, min_free_bytes)

    @property
    def spool_dir(self) -> Path:
        """This process's spool folder; the pid keeps concurrent SCP processes apart."""
        path = self.root / ".tmp" / f"{SPOOL_PREFIX}{os.getpid()}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_spool(self, limit: int) -> SpoolFile:
        return SpoolFile(self.spool_dir, limit)

    def clean_stale_spools(self) -> int:
        """Removes spool folders of processes that no longer run (half-received data of a crash)."""
        removed = 0
        tmp = self.root / ".tmp"
        if not tmp.is_dir():
            return 0
        for folder in tmp.glob(f"{SPOOL_PREFIX}*"):
            try:
                pid = int(folder.name[len(SPOOL_PREFIX) :])
            except ValueError:
                continue
            if pid == os.getpid() or _pid_alive(pid):
                continue
            for leftover in folder.iterdir():
                leftover.unlink(missing_ok=True)
                removed += 1
            with contextlib.suppress(OSError):
                folder.rmdir()
        return removed

    def has_room(self) -> bool:
        """False when the file system is below the configured free-space reserve (C-STORE 0xA700)."""
        return shutil.disk_usage(self.root).free >= self.min_free_bytes

    @staticmethod
    def relpath_for(study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return hashed_relpath(study_uid, series_uid, sop_uid)

    def path_of(self, relpath: Path | str) -> Path:
        return resolve_inside(self.root, relpath)

    def place(self, spooled: Path | str, relpath: Path, *, replace: bool = True) -> Path:
        """Moves an already fsynced spool file to ``relpath`` atomically; with ``replace=False`` an
        existing file is left alone (``FileExistsError``)."""
        target = self.path_of(relpath)
        self._make_parents(target.parent)
        if replace:
            os.replace(spooled, target)
        else:
            os.link(spooled, target)
        return target

    def sync_folder_of(self, relpath: Path | str) -> None:
        fsync_dir(self.path_of(relpath).parent)

    def exists(self, relpath: Path | str) -> bool:
        return self.path_of(relpath).is_file()

    def remove(self, relpath: Path | str) -> None:
        self.path_of(relpath).unlink(missing_ok=True)

    def _make_parents(self, folder: Path) -> None:
        """Creates the fan-out folders and syncs each new one's parent, so a new folder survives a crash."""
        if folder.is_dir():
            return
        missing: list[Path] = []
        probe = folder
        while not probe.is_dir():
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                path.mkdir()
            fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
