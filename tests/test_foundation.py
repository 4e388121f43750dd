"""Settings, UIDs, state transitions and migrations: the contract every part stands on."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from dicom_agent.config import Settings
from dicom_agent.db.states import ExportState, StudyState, check_export, check_study
from dicom_agent.dicom.uids import derived_uid, is_valid_uid
from dicom_agent.errors import StateTransitionError


def test_settings_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("ae_title: FROM_FILE\nstudy_quiet_seconds: 7\ndestinations: PACS@10.0.0.1:104\n")
    monkeypatch.setenv("DICOM_AGENT_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("DICOM_AGENT_STUDY_QUIET_SECONDS", "3")
    monkeypatch.setenv("DICOM_AGENT_STUDY_QUIET_OVERRIDES", "CR=2, CT=20")
    s = Settings()
    assert s.ae_title == "FROM_FILE"
    assert s.study_quiet_seconds == 3  # the environment wins over the file
    assert s.destinations == ["PACS@10.0.0.1:104"]
    assert s.quiet_seconds_for({"CT", "CR"}) == 20
    assert s.quiet_seconds_for({"PT"}) == 3


def test_settings_reject_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_AGENT_AE_TITLE", "A" * 17)
    with pytest.raises(ValueError):
        Settings()
    monkeypatch.setenv("DICOM_AGENT_AE_TITLE", "OK")
    monkeypatch.setenv("DICOM_AGENT_DICOM_PORT", "70000")
    with pytest.raises(ValueError):
        Settings()


@pytest.mark.parametrize(
    ("uid", "ok"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("2.25.123", True),
        ("../../etc/passwd", False),
        ("1.2.03", False),
        ("1." + "2" * 70, False),
        ("", False),
        ("1.2.3 ", False),
    ],
)
def test_uid_validation(uid: str, ok: bool) -> None:
    assert is_valid_uid(uid) is ok


def test_derived_uids_are_deterministic_and_valid() -> None:
    a = derived_uid("1.2.3", "model", "1.0", "sr")
    assert a == derived_uid("1.2.3", "model", "1.0", "sr")
    assert a != derived_uid("1.2.3", "model", "1.0", "seg")
    assert a.startswith("2.25.") and is_valid_uid(a)


def test_state_transitions_are_checked() -> None:
    assert check_study(StudyState.RECEIVING, StudyState.COMPLETE) is StudyState.COMPLETE
    with pytest.raises(StateTransitionError):
        check_study(StudyState.RECEIVING, StudyState.EXPORTED)
    assert check_export(ExportState.DEAD, ExportState.PENDING) is ExportState.PENDING
    with pytest.raises(StateTransitionError):
        check_export(ExportState.DONE, ExportState.SENDING)


def test_migrations_create_the_design_tables(database_url: str) -> None:
    from dicom_agent.db.session import engine_for

    names = set(sa.inspect(engine_for(database_url)).get_table_names())
    expected = {"study", "series", "instance", "job", "finding", "result_object", "export", "review", "user"}
    assert expected | {"audit_event", "alembic_version"} <= names


def test_migrations_match_the_orm(database_url: str) -> None:
    """A model change without a migration fails here (autogenerate finds no difference)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from dicom_agent.db.base import Base
    from dicom_agent.db.session import engine_for

    with engine_for(database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_send_walks_folders_for_part10_files_only() -> None:
    """``dicom-agent send samples/`` must skip the ground truth and masks committed beside the studies."""
    from dicom_agent.export.scu import iter_dicom_files

    samples = Path(__file__).resolve().parents[1] / "samples"
    found = list(iter_dicom_files([samples]))
    assert len(found) == len(list(samples.rglob("*.dcm"))) > 0
    assert all(p.suffix == ".dcm" for p in found)
    named = samples / "cxr" / "ground_truth.json"
    assert list(iter_dicom_files([named])) == [named]  # a file named directly is tried, and fails clearly


def test_default_export_profile_accepts_every_encoder_profile() -> None:
    from typing import get_args

    from dicom_agent.encode.study import PROFILES

    assert set(get_args(Settings.model_fields["export_default_profile"].annotation)) == set(PROFILES)
