"""Routing rules: one YAML file (``ROUTING_FILE``) → validated pydantic models; first matching rule wins.

A rule matches a study on its header facts (modality, body part, descriptions, calling AE, any tag) and
either runs one model with chosen tasks, destinations, output profile and priority, or ignores the study.
Validation happens at start: an invalid file raises ``RoutingError`` naming the file and the line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dicom_agent.errors import RoutingError

DEFAULT_RULES_FILE = Path(__file__).with_name("default_rules.yaml")

# A tag is named by its DICOM keyword (``Manufacturer``) or written ``(gggg,eeee)`` (PS3.5 7.1).
_TAG_RE = re.compile(r"^\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)$")

# A destination is written ``AET@host:port`` (as the DESTINATIONS setting); AE titles are 1-16 characters.
_PEER_RE = re.compile(r"^[^@\s][^@]{0,15}@[^@:\s]+:\d{1,5}$")

Strings = list[str]


def _as_list(value: Any) -> Any:
    """``CT`` and ``[CT, PT]`` both mean a list; values are compared upper-cased (DICOM CS values)."""
    if value is None:
        return None
    if isinstance(value, str | int):
        value = [value]
    if isinstance(value, list):
        return [str(v).strip().upper() for v in value]
    return value


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern, re.IGNORECASE) if pattern is not None else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """All given criteria must hold (AND); a list of values means any of them (OR).

    Series-level criteria (modality, body part, series description, tags) hold when any series of the study
    satisfies them. Regexes are searched case-insensitively (``re.search``).
    """

    modality: Strings | None = None
    body_part: Strings | None = None
    study_description: str | None = None
    series_description: str | None = None
    calling_ae: Strings | None = None
    tags: dict[str, str] | None = None  # keyword or (gggg,eeee) -> regex on the value as text

    @field_validator("modality", "body_part", "calling_ae", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("study_description", "series_description")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        from pydicom.datadict import tag_for_keyword

        for name, pattern in value.items():
            if not _TAG_RE.match(name) and tag_for_keyword(name) is None:
                raise ValueError(f"unknown tag {name!r}: use a DICOM keyword or (gggg,eeee)")
            try:
                re.compile(str(pattern))
            except re.error as exc:
                raise ValueError(f"invalid regular expression for {name}: {exc}") from exc
        return {k: str(v) for k, v in value.items()}

    @property
    def study_description_re(self) -> re.Pattern[str] | None:
        return _compile(self.study_description)

    @property
    def series_description_re(self) -> re.Pattern[str] | None:
        return _compile(self.series_description)


class SeriesSelection(_Strict):
    """Which series of a matched study go to the model.

    Localizers (ImageType LOCALIZER), derived/secondary images and non-image objects (SR, SEG, KOS, PR —
    including our own results coming back) are skipped unless a flag says otherwise.
    """

    modality: Strings | None = None  # default: the study's image modalities
    orientation: Literal["any", "axial", "coronal", "sagittal"] = "any"
    pick: Literal["largest", "all"] = "largest"
    min_instances: int = Field(1, ge=1)
    skip_localizers: bool = True
    skip_derived: bool = True

    @field_validator("modality", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _as_list(value)


class Rule(_Strict):
    """One routing rule: a match and an action (run a model, or ignore)."""

    name: str = Field(min_length=1, max_length=128)
    match: list[Match] = Field(default_factory=lambda: [Match()])  # a list: any of these matches
    ignore: bool = False
    reason: str | None = None  # recorded for ignored studies
    model: str = "bundled"  # logical model name; "bundled" is the bundle in MODEL_DIR
    tasks: Strings = Field(default_factory=lambda: ["findings", "report"])
    series: SeriesSelection = Field(default_factory=SeriesSelection)
    destinations: list[str] | None = None  # None: the DESTINATIONS setting; [] : keep results on the node
    profile: Literal["full", "sr-only", "key-images", "key-images+gsps"] = "full"  # full = SR + SEG + KOS
    priority: Literal["stat", "routine"] = "routine"
    queue: Literal["auto", "gpu", "cpu"] = "auto"

    @field_validator("match", mode="before")
    @classmethod
    def _match_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("destinations")
    @classmethod
    def _destinations(cls, value: list[str] | None) -> list[str] | None:
        for text in value or []:
            if not _PEER_RE.match(text.strip()):
                raise ValueError(f"destination {text!r} is not AET@host:port")
        return value


class RuleSet(_Strict):
    """The whole routing file: rules in order; the first match wins; no match → the study is ignored."""

    version: Literal[1] = 1
    rules: list[Rule] = Field(min_length=1)
    source: str = "<memory>"

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)
        return self


def _node_at(node: yaml.Node, loc: tuple[int | str, ...]) -> yaml.Node:
    """The deepest YAML node along a pydantic error location, for its line number."""
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
            if found is None:
                break
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
    return node


def parse_rules(text: str, source: str = "<memory>") -> RuleSet:
    """Parses and validates rules; errors name ``source:line`` and the offending field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise RoutingError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict) or root is None:
        raise RoutingError(f"{source}:1: a routing file is a mapping with a 'rules' list")
    try:
        return RuleSet.model_validate({**data, "source": source})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            node = _node_at(root, loc)
            field = ".".join(str(p) for p in loc) or "(file)"
            lines.append(f"{source}:{node.start_mark.line + 1}: {field}: {err['msg']}")
        raise RoutingError("invalid routing rules\n" + "\n".join(dict.fromkeys(lines))) from exc


def load_rules(path: Path | None = None) -> RuleSet:
    """Loads ``path`` (the ``ROUTING_FILE`` setting) or the bundled default rules."""
    path = path or DEFAULT_RULES_FILE
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutingError(f"cannot read routing file {path}: {exc.strerror}") from exc
    return parse_rules(text, str(path))
