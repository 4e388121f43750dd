"""Fixtures of the results tests: source series written to disk and the objects encoded from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset

from dicom_agent.encode import EncodedObject, encode_study
from dicom_agent.inference.types import StudyFindings
from tests.results import findings as F
from tests.results import sources as S


@dataclass
class Case:
    name: str
    sources: list[Dataset]
    findings: StudyFindings
    source_paths: list[Path]
    objects: list[EncodedObject]
    paths: dict[str, list[Path]]  # kind -> files

    def one(self, kind: str) -> Path:
        assert len(self.paths[kind]) == 1, self.paths
        return self.paths[kind][0]


def make_case(tmp: Path, name: str, profile: str = "full") -> Case:
    if name == "ct":
        sources = S.ct_series()
        findings = F.ct_findings(sources)
    elif name == "dx":
        sources = [S.dx_image()]
        findings = F.dx_findings(sources[0])
    elif name == "pet":
        sources = S.pet_series()
        findings = F.pet_findings(sources)
    else:
        raise ValueError(name)
    source_paths = S.write_all(sources, tmp / "src")
    objects = encode_study(findings, sources, profile=profile)
    paths: dict[str, list[Path]] = {}
    out = tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(objects):
        path = out / f"{name}-{obj.kind}-{i}.dcm"
        path.write_bytes(obj.to_bytes())
        paths.setdefault(obj.kind, []).append(path)
    return Case(name, sources, findings, source_paths, objects, paths)


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("ct"), "ct")


@pytest.fixture(scope="module")
def dx_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("dx"), "dx")


@pytest.fixture(scope="module")
def pet_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("pet"), "pet")


@pytest.fixture(scope="module", params=["ct", "dx", "pet"])
def any_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp(request.param), request.param)
