"""Load and verify a model bundle's ``manifest.json`` (design notes, "Model interface").

A bundle is a directory: ``manifest.json`` plus the files it lists (ONNX graphs, tokenizer), each with its sha256.
Loading refuses a bundle whose files do not match their hashes, so the identity written into every SR/SEG
(:class:`ModelIdentity`, bundle sha256 over the manifest bytes) names exactly the weights that ran.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dicom_agent.errors import PermanentInferenceError
from dicom_agent.inference.types import ModelIdentity
from dicom_agent.inference.vocabulary import (
    LabelSpec,
    LocationSpec,
    Vocabulary,
    label_from,
    location_from,
    project_locations,
)

MANIFEST_NAME = "manifest.json"
NOT_CLINICAL = "trained on synthetic phantoms; not for clinical use"


class BundleError(PermanentInferenceError):
    """The bundle is missing, malformed or tampered with: no study can run on it."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int | None = None

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        """Paths stay inside the bundle directory: a manifest cannot name ``../`` or absolute files."""
        parts = Path(value).parts
        if not value or Path(value).is_absolute() or ".." in parts:
            raise ValueError(f"bundle file path must be relative and inside the bundle: {value!r}")
        return value


class Manifest(BaseModel):
    """The fields the runtime relies on; everything else the model engineer writes is kept in ``extra``."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str = "dicom-agent-unified"
    version: str
    manufacturer: str = "dicom_agent project"
    description: str = ""
    files: list[FileEntry]
    labels: list[dict[str, Any]]
    locations: list[dict[str, Any]] | dict[str, Any] | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    training_data: Any = None
    metrics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("files", mode="before")
    @classmethod
    def _files(cls, value: Any) -> Any:
        """Accepts ``{"name": {"sha256": ...}}`` or ``{"name": "hex"}`` as well as a list of entries."""
        if isinstance(value, dict):
            return [
                {"path": name, **(entry if isinstance(entry, dict) else {"sha256": entry})}
                for name, entry in value.items()
            ]
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return [{"key": key, **entry} for key, entry in value.items()]
        return value


class Bundle:
    """A verified bundle: its directory, manifest, vocabulary and identity."""

    def __init__(self, directory: Path, manifest: Manifest, manifest_sha256: str) -> None:
        self.directory = directory
        self.manifest = manifest
        self.sha256 = manifest_sha256
        self.vocabulary = Vocabulary(labels=_labels(manifest), locations=_locations(manifest))

    @property
    def identity(self) -> ModelIdentity:
        description = self.manifest.description or NOT_CLINICAL
        if self.manifest.name.startswith("dicom-agent") and NOT_CLINICAL not in description:
            description = f"{description}; {NOT_CLINICAL}"
        return ModelIdentity(
            name=self.manifest.name,
            version=self.manifest.version,
            manufacturer=self.manifest.manufacturer,
            bundle_sha256=self.sha256,
            description=description,
        )

    @property
    def labels(self) -> list[LabelSpec]:
        return list(self.vocabulary.labels.values())

    def path(self, name: str) -> Path:
        """A file of the bundle, by its manifest path (verified at load)."""
        if name not in {f.path for f in self.manifest.files}:
            raise BundleError(f"{name!r} is not listed in the bundle manifest")
        return self.directory / name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(directory: Path | str, verify: bool = True) -> Bundle:
    """Reads ``manifest.json``, validates it and (by default) checks every listed file's sha256."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    try:
        raw = manifest_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"no bundle manifest at {manifest_path}: {exc.strerror}") from exc
    try:
        manifest = Manifest.model_validate(json.loads(raw.decode("utf-8")))
    except (ValueError, ValidationError) as exc:
        raise BundleError(f"invalid bundle manifest {manifest_path}: {exc}") from exc
    if verify:
        verify_files(directory, manifest)
    return Bundle(directory, manifest, hashlib.sha256(raw).hexdigest())


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Refuses a bundle with a missing, resized or modified file (names the first offending file)."""
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file():
            raise BundleError(f"bundle file {entry.path} is missing from {directory}")
        if entry.bytes is not None and path.stat().st_size != entry.bytes:
            raise BundleError(f"bundle file {entry.path} has {path.stat().st_size} bytes, manifest says {entry.bytes}")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise BundleError(
                f"bundle file {entry.path} does not match its manifest sha256 "
                f"(expected {entry.sha256[:12]}…, found {actual[:12]}…): refusing a modified bundle"
            )


def _labels(manifest: Manifest) -> dict[str, LabelSpec]:
    out: dict[str, LabelSpec] = {}
    for entry in manifest.labels:
        try:
            spec = label_from(entry)
        except (KeyError, ValueError, TypeError) as exc:
            raise BundleError(f"invalid label in manifest: {entry!r}: {exc}") from exc
        out[spec.key] = spec
    if not out:
        raise BundleError("the bundle manifest has no labels")
    return out


def _locations(manifest: Manifest) -> dict[str, LocationSpec]:
    raw = manifest.locations
    if not raw:
        return project_locations()
    items = raw.items() if isinstance(raw, dict) else ((entry.get("key"), entry) for entry in raw)
    return {str(key): location_from(entry, key) for key, entry in items}
