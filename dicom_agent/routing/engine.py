"""The routing decision, pure: study facts + rules → which rule, why, which series, and what to do.

First match wins. A rule whose study-level match holds but whose series selection leaves nothing (e.g. only
scouts) does not apply and the next rule is tried; the trace says so. No match at all → ``ignore``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydicom.datadict import tag_for_keyword

from dicom_agent.routing.facts import SeriesFacts, StudyFacts
from dicom_agent.routing.rules import Match, Rule, RuleSet, SeriesSelection

_TAG_RE = re.compile(r"^\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)$")


@dataclass(frozen=True)
class Decision:
    """What to do with a study, with the rule's name and a human-readable reason (stored on the study)."""

    action: Literal["run", "ignore"]
    rule: str | None
    reason: str
    series_uids: tuple[str, ...] = ()
    model: str | None = None
    tasks: tuple[str, ...] = ()
    destinations: tuple[str, ...] | None = None  # None: the DESTINATIONS setting
    profile: str = "full"
    priority: str = "routine"
    queue: str = "auto"
    trace: tuple[str, ...] = field(default=())

    def detail(self) -> dict[str, object]:
        """JSON-safe summary stored in ``study.route_detail``."""
        return {
            "action": self.action,
            "rule": self.rule,
            "reason": self.reason,
            "series": list(self.series_uids),
            "model": self.model,
            "tasks": list(self.tasks),
            "destinations": None if self.destinations is None else list(self.destinations),
            "profile": self.profile,
            "priority": self.priority,
            "queue": self.queue,
            "trace": list(self.trace),
        }


def _tag_number(name: str) -> int | None:
    m = _TAG_RE.match(name)
    if m:
        return (int(m.group(1), 16) << 16) | int(m.group(2), 16)
    return tag_for_keyword(name)


def _in(value: str, allowed: list[str]) -> bool:
    return value.upper() in allowed


def match_study(match: Match, facts: StudyFacts) -> tuple[bool, str]:
    """Whether every criterion of ``match`` holds; the reason names each criterion checked."""
    why: list[str] = []
    if match.modality is not None:
        hit = sorted(facts.modalities & set(match.modality))
        if not hit:
            return False, f"modality {sorted(facts.modalities)} not in {match.modality}"
        why.append(f"modality {','.join(hit)}")
    if match.body_part is not None:
        parts = [s.body_part for s in facts.series if s.body_part and _in(s.body_part, match.body_part)]
        if not parts:
            seen = sorted({s.body_part for s in facts.series if s.body_part})
            return False, f"body part {seen or '(none)'} not in {match.body_part}"
        why.append(f"body part {parts[0]}")
    rx = match.study_description_re
    if rx is not None:
        if not rx.search(facts.study_description):
            return False, f"study description {facts.study_description!r} !~ /{rx.pattern}/"
        why.append(f"study description ~ /{rx.pattern}/")
    rx = match.series_description_re
    if rx is not None:
        hits = [s.description for s in facts.series if rx.search(s.description)]
        if not hits:
            return False, f"no series description ~ /{rx.pattern}/"
        why.append(f"series description {hits[0]!r} ~ /{rx.pattern}/")
    if match.calling_ae is not None:
        aes = sorted(a for a in facts.calling_aes if a.strip().upper() in match.calling_ae)
        if not aes:
            return False, f"calling AE {sorted(facts.calling_aes)} not in {match.calling_ae}"
        why.append(f"calling AE {aes[0]}")
    for name, pattern in (match.tags or {}).items():
        tag = _tag_number(name)
        tag_rx = re.compile(pattern, re.IGNORECASE)
        if tag is None or not any(tag_rx.search(s.tags.get(tag, "")) for s in facts.series if tag in s.tags):
            return False, f"tag {name} !~ /{pattern}/"
        why.append(f"tag {name} ~ /{pattern}/")
    return True, "; ".join(why) or "matches any study"


def select_series(sel: SeriesSelection, facts: StudyFacts) -> tuple[list[SeriesFacts], list[str]]:
    """The series a rule hands to the model, and a note per skipped series."""
    kept: list[SeriesFacts] = []
    notes: list[str] = []
    for s in facts.series:
        skip = None
        if not s.is_image:
            skip = f"non-image {s.modality}"
        elif sel.skip_localizers and s.is_localizer:
            skip = "localizer"
        elif sel.skip_derived and s.is_derived:
            skip = "derived/secondary"
        elif sel.modality is not None and s.modality not in sel.modality:
            skip = f"modality {s.modality} not selected"
        elif sel.orientation != "any" and s.orientation != sel.orientation:
            skip = f"orientation {s.orientation or 'unknown'} is not {sel.orientation}"
        elif s.instance_count < sel.min_instances:
            skip = f"{s.instance_count} instances < {sel.min_instances}"
        if skip:
            notes.append(f"skip series {s.series_instance_uid} ({skip})")
        else:
            kept.append(s)
    if sel.pick == "largest" and kept:
        best = max(kept, key=lambda s: (s.instance_count, -(s.series_number or 0)))
        notes += [f"skip series {s.series_instance_uid} (smaller than the largest)" for s in kept if s is not best]
        kept = [best]
    return kept, notes


def decide(rules: RuleSet, facts: StudyFacts) -> Decision:
    """First matching rule wins; returns ``ignore`` with the reason when nothing applies."""
    trace: list[str] = []
    for rule in rules.rules:
        reasons = [match_study(m, facts) for m in rule.match]
        hit = next((why for ok, why in reasons if ok), None)
        if hit is None:
            trace.append(f"rule {rule.name!r}: no match ({' | '.join(why for _, why in reasons)})")
            continue
        if rule.ignore:
            reason = rule.reason or f"ignored by rule {rule.name!r}"
            trace.append(f"rule {rule.name!r}: matched ({hit}) → ignore")
            return Decision("ignore", rule.name, f"{reason} ({hit})", trace=tuple(trace))
        series, notes = select_series(rule.series, facts)
        if not series:
            trace.append(f"rule {rule.name!r}: matched ({hit}) but no eligible series: {'; '.join(notes)}")
            continue
        trace.append(f"rule {rule.name!r}: matched ({hit})")
        trace += notes
        return _run(rule, hit, series, trace)
    reason = "no rule matched" if rules.rules else "no rules"
    return Decision("ignore", None, reason, trace=tuple(trace))


def _run(rule: Rule, hit: str, series: list[SeriesFacts], trace: list[str]) -> Decision:
    picked = ", ".join(f"{s.series_instance_uid} ({s.modality}, {s.instance_count} instances)" for s in series)
    return Decision(
        action="run",
        rule=rule.name,
        reason=f"{hit}; series {picked}",
        series_uids=tuple(s.series_instance_uid for s in series),
        model=rule.model,
        tasks=tuple(rule.tasks),
        destinations=None if rule.destinations is None else tuple(rule.destinations),
        profile=rule.profile,
        priority=rule.priority,
        queue=rule.queue,
        trace=tuple(trace),
    )
