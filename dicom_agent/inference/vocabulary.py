"""The words a bundle speaks: its labels (coded findings) and locations, each with English and Chinese names.

The renderer and the parsers work only from a :class:`Vocabulary`, so a site's own bundle with other labels gets
bilingual text and parsing without code changes. A bundle's manifest supplies the labels; locations come from the
manifest when it has them, else from the project's terminology (``models.terminology``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dicom_agent.dicom.codes import Code


@dataclass(frozen=True)
class LabelSpec:
    """One finding class of a model: code, names, decision threshold, triage flag."""

    key: str
    code: Code
    name_en: str
    name_zh: str
    threshold: float = 0.5
    critical: bool = False
    focal: bool = True  # has boxes and a lobe/organ location; non-focal findings are named by side only
    synonyms_en: tuple[str, ...] = ()
    synonyms_zh: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocationSpec:
    """One anatomical location (e.g. a lung zone) with its laterality and optional finding-site code."""

    key: str
    name_en: str
    name_zh: str
    laterality: str | None = None  # "right" | "left" | "bilateral" | None
    code: Code | None = None
    synonyms_en: tuple[str, ...] = ()
    synonyms_zh: tuple[str, ...] = ()


LATERALITY_EN = {"right": "right", "left": "left", "bilateral": "bilateral"}
LATERALITY_ZH = {"right": "右侧", "left": "左侧", "bilateral": "双侧"}


@dataclass
class Vocabulary:
    """Labels and locations by key, in manifest order (the order the renderer writes them)."""

    labels: dict[str, LabelSpec]
    locations: dict[str, LocationSpec] = field(default_factory=dict)

    def label(self, key: str) -> LabelSpec:
        try:
            return self.labels[key]
        except KeyError:
            raise KeyError(f"label {key!r} is not in the bundle's label set") from None

    def location(self, key: str | None) -> LocationSpec | None:
        return self.locations.get(key) if key else None

    def where(self, label: str, location: str | None, laterality: str | None) -> str | None:
        """The comparable "where" of a finding: the location key for focal labels, the side for the others.

        Reports name a lobe or organ for focal findings ("nodule in the right upper lobe") but only a side for
        pleural and global ones ("left pleural effusion", "cardiomegaly"), so facts compare on that.
        """
        spec = self.labels.get(label)
        if spec is None or spec.focal:
            return location
        if laterality is None and location is not None:
            loc = self.locations.get(location)
            laterality = loc.laterality if loc else None
        return laterality


def _code(raw: object) -> Code | None:
    """A code from a manifest/terminology entry: a mapping, a 3-sequence or a Code."""
    if raw is None:
        return None
    if isinstance(raw, Code):
        return raw
    if isinstance(raw, dict):
        return Code(str(raw["value"]), str(raw["scheme"]), str(raw["meaning"]))
    if isinstance(raw, (list, tuple)) and len(raw) == 3:
        return Code(str(raw[0]), str(raw[1]), str(raw[2]))
    for attrs in (("value", "scheme", "meaning"), ("code_value", "scheme", "meaning")):
        if all(hasattr(raw, a) for a in attrs):
            return Code(*(str(getattr(raw, a)) for a in attrs))
    raise ValueError(f"not a code: {raw!r}")


def code_from(raw: object) -> Code | None:
    """Public form of the code reader, for manifest and terminology loaders."""
    return _code(raw)


def project_locations() -> dict[str, LocationSpec]:
    """Locations of the project's own terminology, or nothing when ``models`` is not installed."""
    try:
        from models import terminology  # the ML side's single source of names
    except ImportError:
        return {}
    raw = getattr(terminology, "LOCATIONS", {})
    items = raw.items() if isinstance(raw, dict) else ((getattr(v, "key", None), v) for v in raw)
    out: dict[str, LocationSpec] = {}
    for key, value in items:
        spec = location_from(value, key)
        out[spec.key] = spec
    return out


def _get(value: object, name: str, default: object = None) -> object:
    if isinstance(value, dict):
        return value.get(name, default)
    return getattr(value, name, default)


def location_from(value: object, key: str | None = None) -> LocationSpec:
    """A location from a manifest entry (mapping) or a terminology object."""
    return LocationSpec(
        key=str(key or _get(value, "key")),
        name_en=str(_get(value, "name_en") or _get(value, "en")),
        name_zh=str(_get(value, "name_zh") or _get(value, "zh")),
        laterality=_get(value, "laterality") or None,  # type: ignore[arg-type]
        code=_code(_get(value, "code")),
        synonyms_en=tuple(_get(value, "synonyms_en", ()) or ()),  # type: ignore[arg-type]
        synonyms_zh=tuple(_get(value, "synonyms_zh", ()) or ()),  # type: ignore[arg-type]
    )


def label_from(value: object, key: str | None = None) -> LabelSpec:
    """A label from a manifest entry (mapping) or a terminology object."""
    code = _code(_get(value, "code"))
    if code is None:
        raise ValueError(f"label {key or _get(value, 'key')!r} has no code")
    return LabelSpec(
        key=str(key or _get(value, "key")),
        code=code,
        name_en=str(_get(value, "name_en") or _get(value, "en") or code.meaning),
        name_zh=str(_get(value, "name_zh") or _get(value, "zh")),
        threshold=float(_get(value, "threshold", 0.5)),  # type: ignore[arg-type]
        critical=bool(_get(value, "critical", False)),
        focal=bool(_get(value, "focal", True)),
        synonyms_en=tuple(_get(value, "synonyms_en", ()) or ()),  # type: ignore[arg-type]
        synonyms_zh=tuple(_get(value, "synonyms_zh", ()) or ()),  # type: ignore[arg-type]
    )


def project_vocabulary() -> Vocabulary:
    """The project's own label set and locations (``models.terminology``), for tests and tools."""
    from models import terminology

    labels = {key: label_from(value, key) for key, value in terminology.LABELS.items()}
    return Vocabulary(labels=labels, locations=project_locations())
