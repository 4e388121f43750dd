"""Which of a study's series a model looks at: every radiograph, and one volume per modality.

Routing has already chosen the study; within it, radiographs (CR, DX) are all used (a PA and a lateral both
carry findings), while for CT and PET the series with the most slices is taken (the thin-slice
reconstruction rather than a scout or a thick MPR). Other modalities are ignored and named in a flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dicom_agent.inference.types import SeriesInput, StudyInput

RADIOGRAPH_MODALITIES = ("CR", "DX")
VOLUME_MODALITIES = {"CT": "ct", "PT": "pet"}


@dataclass
class Selection:
    radiographs: list[SeriesInput] = field(default_factory=list)
    volumes: dict[str, SeriesInput] = field(default_factory=dict)  # "ct" | "pet" -> series
    ignored: list[str] = field(default_factory=list)  # modalities not used

    @property
    def series_uids(self) -> list[str]:
        return [s.series_instance_uid for s in (*self.radiographs, *self.volumes.values())]

    @property
    def empty(self) -> bool:
        return not self.radiographs and not self.volumes


def select_series(study: StudyInput) -> Selection:
    selection = Selection()
    for series in study.series:
        modality = series.modality.upper()
        if modality in RADIOGRAPH_MODALITIES:
            selection.radiographs.append(series)
        elif modality in VOLUME_MODALITIES:
            kind = VOLUME_MODALITIES[modality]
            current = selection.volumes.get(kind)
            if current is None or len(series.files) > len(current.files):
                selection.volumes[kind] = series
        elif modality not in selection.ignored:
            selection.ignored.append(modality)
    return selection
