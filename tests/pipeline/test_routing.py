"""Routing rules: every matcher, first match wins, ignore, series selection, line-numbered validation errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicom_agent.errors import RoutingError
from dicom_agent.routing.engine import decide
from dicom_agent.routing.facts import SeriesFacts, StudyFacts, facts_from_files
from dicom_agent.routing.rules import load_rules, parse_rules
from tests.pipeline.factory import AXIAL, CORONAL, write_series

REPO = Path(__file__).resolve().parents[2]


def series(uid: str, modality: str = "CT", n: int = 100, **kw: object) -> SeriesFacts:
    kw.setdefault("image_type", ("ORIGINAL", "PRIMARY", "AXIAL"))
    kw.setdefault("orientation", "axial" if modality == "CT" else None)
    return SeriesFacts(series_instance_uid=uid, modality=modality, instance_count=n, **kw)  # type: ignore[arg-type]


def study(*s: SeriesFacts, desc: str = "", aes: tuple[str, ...] = ("PACS",)) -> StudyFacts:
    return StudyFacts("1.2.3", study_description=desc, calling_aes=frozenset(aes), series=tuple(s))


def rules(text: str):  # type: ignore[no-untyped-def]
    return parse_rules(text, "test.yaml")


@pytest.mark.parametrize(
    ("match", "facts", "hit"),
    [
        ("modality: [CT, MR]", study(series("s1", "CT")), True),
        ("modality: CR", study(series("s1", "CT")), False),
        ("body_part: chest", study(series("s1", body_part="CHEST")), True),
        ("body_part: [HEAD]", study(series("s1", body_part="CHEST")), False),
        ("study_description: 'thorax|chest'", study(series("s1"), desc="CT THORAX W/O"), True),
        ("study_description: '^abdomen'", study(series("s1"), desc="CT THORAX"), False),
        ("series_description: 'lung.*1\\.0'", study(series("s1", description="Lung 1.0 mm")), True),
        ("series_description: 'bone'", study(series("s1", description="Lung 1.0 mm")), False),
        ("calling_ae: [er_ct1]", study(series("s1"), aes=("ER_CT1",)), True),
        ("calling_ae: [ER_CT1]", study(series("s1"), aes=("OTHER",)), False),
        ("tags: {Manufacturer: '^acme'}", study(series("s1", tags={0x00080070: "ACME Medical"})), True),
        ("tags: {'(0008,0070)': 'acme'}", study(series("s1", tags={0x00080070: "ACME"})), True),
        ("tags: {Manufacturer: 'acme'}", study(series("s1", tags={0x00080070: "Other"})), False),
        ("tags: {Manufacturer: 'acme'}", study(series("s1")), False),
    ],
)
def test_each_matcher(match: str, facts: StudyFacts, hit: bool) -> None:
    rs = rules(f"rules:\n  - name: r\n    match: {{{match}}}\n    series: {{pick: all}}\n")
    d = decide(rs, facts)
    assert (d.action == "run") is hit, d
    assert d.rule == ("r" if hit else None)
    if not hit:
        assert d.reason == "no rule matched"
        assert "no match" in d.trace[0]


def test_all_criteria_of_a_match_must_hold_and_a_list_means_any() -> None:
    facts = study(series("s1", "CT", body_part="HEAD"), desc="CT HEAD")
    both = rules("rules:\n  - name: r\n    match: {modality: CT, body_part: CHEST}\n")
    assert decide(both, facts).action == "ignore"
    either = rules(
        "rules:\n  - name: r\n    match:\n      - {modality: CT, body_part: CHEST}\n      - {study_description: head}\n"
    )
    assert decide(either, facts).rule == "r"


def test_first_match_wins_and_ignore_rules_send_nothing() -> None:
    rs = rules(
        """
rules:
  - name: stat-er
    match: {calling_ae: ER_CT}
    priority: stat
    destinations: [PACS@10.0.0.1:104]
  - name: skip-head
    match: {body_part: HEAD}
    ignore: true
    reason: head CT is not supported
  - name: any-ct
    match: {modality: CT}
"""
    )
    er = decide(rs, study(series("s1", body_part="HEAD"), aes=("ER_CT",)))
    assert (er.rule, er.priority, er.destinations) == ("stat-er", "stat", ("PACS@10.0.0.1:104",))
    head = decide(rs, study(series("s1", body_part="HEAD")))
    assert head.action == "ignore" and head.rule == "skip-head"
    assert head.reason.startswith("head CT is not supported") and head.series_uids == ()
    other = decide(rs, study(series("s1", body_part="CHEST")))
    assert other.rule == "any-ct" and other.priority == "routine" and other.destinations is None


def test_series_selection_picks_the_largest_axial_original_series() -> None:
    facts = study(
        series("scout", n=2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), orientation="coronal"),
        series("thin", n=300),
        series("thick", n=60),
        series("mpr", n=400, image_type=("DERIVED", "SECONDARY", "REFORMATTED")),
        series("cor", n=500, orientation="coronal"),
        series("sr", "SR", n=1, image_type=()),
    )
    rs = rules("rules:\n  - name: ct\n    match: {modality: CT}\n    series: {orientation: axial, pick: largest}\n")
    d = decide(rs, facts)
    assert d.series_uids == ("thin",)
    notes = "\n".join(d.trace)
    for uid, why in [("scout", "localizer"), ("mpr", "derived"), ("cor", "orientation"), ("sr", "non-image SR")]:
        assert f"{uid} (" in notes and why in notes
    every = rules("rules:\n  - name: ct\n    match: {modality: CT}\n    series: {pick: all, min_instances: 100}\n")
    assert decide(every, facts).series_uids == ("thin", "cor")


def test_a_rule_without_eligible_series_falls_through() -> None:
    only_scouts = study(series("scout", n=2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    rs = rules("rules:\n  - name: ct\n    match: {modality: CT}\n  - name: rest\n    ignore: true\n")
    d = decide(rs, only_scouts)
    assert d.action == "ignore" and d.rule == "rest"
    assert "no eligible series" in d.trace[0] and "localizer" in d.trace[0]


def test_default_rules_route_chest_ct_cxr_and_pet_and_ignore_our_own_results() -> None:
    rs = load_rules()
    assert decide(rs, study(series("c", "CR", 1, body_part="CHEST"))).rule == "chest-radiograph"
    assert decide(rs, study(series("d", "DX", 1), desc="Chest PA")).rule == "chest-radiograph"
    assert decide(rs, study(series("ct", "CT", 120, body_part="CHEST"))).rule == "ct-chest"
    assert decide(rs, study(series("ct", "CT", 40), series("pt", "PT", 40))).series_uids == ("pt",)
    ours = decide(rs, study(series("sr", "SR", 1), series("seg", "SEG", 1)))
    assert ours.action == "ignore" and ours.rule == "non-image-objects"
    head = decide(rs, study(series("h", "CT", 50, body_part="HEAD"), desc="CT HEAD"))
    assert head.action == "ignore" and head.rule is None


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("rules:\n  - name: a\n    match: {modality: CT}\n    priority: urgent\n", 4, "priority"),
        ("rules:\n  - name: a\n  - name: b\n    match:\n      bodypart: CHEST\n", 5, "bodypart"),
        ("rules:\n  - name: a\n    match:\n      study_description: '(unclosed'\n", 4, "regular expression"),
        ("rules:\n  - name: a\n    match:\n      tags: {NoSuchKeyword: x}\n", 4, "unknown tag"),
        ("rules:\n  - name: a\n    destinations: [nohost]\n", 3, "AET@host:port"),
        ("rules:\n  - name: a\n    tasks: a: b\n", 3, "not valid YAML"),
        ("rules: []\n", 1, "rules"),
    ],
)
def test_validation_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(RoutingError) as err:
        parse_rules(text, "site.yaml")
    assert f"site.yaml:{line}:" in str(err.value), str(err.value)
    assert words in str(err.value)


def test_missing_routing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match="cannot read routing file"):
        load_rules(tmp_path / "nope.yaml")


def test_facts_from_files_read_headers(tmp_path: Path) -> None:
    uid = generate_uid()
    write_series(tmp_path / "ct", 6, uid, "CT", body_part="CHEST", orientation=AXIAL, extra={"Manufacturer": "ACME"})
    write_series(tmp_path / "ct", 3, uid, "CT", body_part="CHEST", orientation=CORONAL, series_number=2)
    (tmp_path / "ct" / "junk.txt").write_text("not dicom")
    [facts] = facts_from_files([tmp_path], calling_ae="MOD1")
    by_count = sorted(facts.series, key=lambda s: s.instance_count)
    assert [s.instance_count for s in by_count] == [3, 6]
    assert [s.orientation for s in by_count] == ["coronal", "axial"]
    assert by_count[1].tags[0x00080070] == "ACME" and facts.calling_aes == {"MOD1"}
    assert decide(load_rules(), facts).series_uids == (by_count[1].series_instance_uid,)


def _cli(*args: str, env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_agent", "routes", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_routes_test_cli_explains_the_match(tmp_path: Path) -> None:
    cxr, ct = generate_uid(), generate_uid()
    write_series(tmp_path / "cxr", 1, cxr, "CR", body_part="CHEST")
    write_series(tmp_path / "ct", 8, ct, "CT", body_part="CHEST", orientation=AXIAL)
    write_series(tmp_path / "ct", 1, ct, "CT", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), orientation=CORONAL)
    res = _cli("test", str(tmp_path / "cxr"), str(tmp_path / "ct"), "-v")
    assert res.returncode == 0, res.stderr
    assert f"study {cxr}" in res.stdout and "rule 'chest-radiograph'" in res.stdout
    assert f"study {ct}" in res.stdout and "rule 'ct-chest'" in res.stdout
    assert "localizer" in res.stdout and "body part CHEST" in res.stdout

    head = generate_uid()
    write_series(tmp_path / "head", 8, head, "CT", body_part="HEAD", orientation=AXIAL)
    res = _cli("test", str(tmp_path / "head"))
    assert res.returncode == 0 and "ignored (no rule): nothing will be sent" in res.stdout


def test_routes_cli_reports_invalid_rules_with_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: a\n    queue: tpu\n")
    res = _cli("check", "--rules", str(bad))
    assert res.returncode == 1
    assert f"{bad}:3: rules.0.queue" in res.stderr
    assert _cli("check").returncode == 0
