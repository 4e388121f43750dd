"""Bundle manifest: validation, per-file sha256 verification, identity and label set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dicom_agent.inference.manifest import NOT_CLINICAL, BundleError, load_bundle


def _bundle(tmp_path: Path, files: dict[str, bytes] | None = None, **overrides: object) -> Path:
    files = files or {"enc2d.onnx": b"graph-bytes", "tokenizer.json": '{"model": "BPE", "vocab": "肺"}'.encode()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    manifest = {
        "name": "dicom-agent-unified",
        "version": "0.1.0",
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()
        },
        "labels": [
            {
                "key": "nodule",
                "code": {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"},
                "name_en": "nodule",
                "name_zh": "结节",
                "threshold": 0.4,
            },
            {
                "key": "pneumothorax",
                "code": ["36118008", "SCT", "Pneumothorax"],
                "name_en": "pneumothorax",
                "name_zh": "气胸",
                "critical": True,
                "focal": False,
            },
        ],
        **overrides,
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    return tmp_path


def test_valid_bundle_loads_with_labels_and_identity(tmp_path: Path) -> None:
    bundle = load_bundle(_bundle(tmp_path))
    assert [label.key for label in bundle.labels] == ["nodule", "pneumothorax"]
    nodule, ptx = bundle.labels
    assert (nodule.code.value, nodule.name_zh, nodule.threshold, nodule.critical) == ("27925004", "结节", 0.4, False)
    assert ptx.critical and not ptx.focal and ptx.threshold == 0.5
    identity = bundle.identity
    assert identity.bundle_sha256 == hashlib.sha256((tmp_path / "manifest.json").read_bytes()).hexdigest()
    assert (identity.name, identity.version) == ("dicom-agent-unified", "0.1.0")
    assert NOT_CLINICAL in identity.description
    assert bundle.vocabulary.locations  # locations from the project's terminology when the manifest has none


def test_modified_file_is_refused(tmp_path: Path) -> None:
    directory = _bundle(tmp_path)
    (directory / "enc2d.onnx").write_bytes(b"graph-bytez")  # same size, one byte changed
    with pytest.raises(BundleError, match=r"enc2d\.onnx does not match its manifest sha256"):
        load_bundle(directory)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    directory = _bundle(tmp_path)
    (directory / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.json is missing"):
        load_bundle(directory)


def test_manifest_cannot_point_outside_the_bundle(tmp_path: Path) -> None:
    inner = tmp_path / "bundle"
    inner.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"x")
    directory = _bundle(inner)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["../outside.bin"] = {"sha256": hashlib.sha256(b"x").hexdigest()}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="inside the bundle"):
        load_bundle(directory)


def test_missing_or_broken_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no bundle manifest"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="invalid bundle manifest"):
        load_bundle(tmp_path)
