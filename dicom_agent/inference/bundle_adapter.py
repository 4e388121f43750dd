"""The exported bundle as a :class:`ModelAdapter`: DICOM in, :class:`StudyFindings` on source images out.

Stages (each timed into ``StudyFindings.timings``): preprocess (pydicom radiographs, SimpleITK volumes, exactly
as the manifest's ``inputs`` say) → heads (ONNX Runtime via the model engineer's ``BundleRunner``: probabilities
thresholded per label, CenterNet boxes, masks) → map back (boxes onto the source pixel grid of the right SOP
instance / frame, masks onto each source series by nearest neighbour) → render (deterministic EN/ZH text of
record) → narrative (optional decoder text, parsed back and compared with the heads; disagreements flagged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk

from dicom_agent.errors import PermanentInferenceError
from dicom_agent.inference.agreement import answer_disagreement, flag_disagreements
from dicom_agent.inference.blobs import fine_channels
from dicom_agent.inference.locate import DEFAULT_LUNG_FIELD, LungMap, PetOrganMap, cxr_location
from dicom_agent.inference.manifest import load_bundle
from dicom_agent.inference.measure import NODULE_MAX_MM, SourceGrid
from dicom_agent.inference.onnx_runner import DELINEATION_REACH, DetectedBox
from dicom_agent.inference.preprocess2d import Radiograph, load_radiographs
from dicom_agent.inference.render import join_sentences, prompt_findings, render
from dicom_agent.inference.series import select_series
from dicom_agent.inference.signs import has_air_bronchograms
from dicom_agent.inference.types import LANGUAGES, Box, Finding, ImageRef, Mask, StudyFindings, StudyInput
from dicom_agent.inference.vocabulary import LabelSpec
from dicom_agent.inference.volume import Volume, VolumeGrid, boxes_from_mask, load_volume, window

log = logging.getLogger(__name__)

MIN_PART_PIXELS = 4  # a side of a non-focal mask smaller than this is noise, not a bilateral finding
# A focal lesion on the 32 x 64^2 volume grid may be smaller than 4 voxels (a 10 mm PET lesion is under one
# 8 x 8 x 24 mm voxel): kept from 2. Bundle 0.8.1, PET finding + location F1 on 100 cases: validation 0.802 ->
# 0.826, held out 0.731 -> 0.745, no false finding added; CT unchanged.
MIN_LESION_VOXELS = 2
# a side holding less than this share of the other side's mask is spill-over, not a bilateral finding: on
# bundle 0.6.x's validation radiographs the effusion masks of one-sided effusions put 1-15 % of their pixels
# on the other side, those of bilateral ones 42-51 %
MIN_SIDE_SHARE = 0.25
MAX_LESIONS_PER_LABEL = 5
SOLID_LABELS = ("mass", "nodule")  # settled against a consolidation on one region by the air bronchogram sign
# a radiograph effusion's fluid surface at its lowest: this percentile of its columns' top rows (``_fluid_height_mm``)
FLUID_SURFACE_PERCENTILE = 90.0
# a PET lesion whose SUVmax stays under a typical mediastinal blood pool's (Deauville's reference) is not
# hypermetabolic: on 150 validation PETs 0.12.0's box-only "lesions" of SUVmax 0.4-0.8 lay on lung beside one
MIN_LESION_SUV = 1.5
MERGE_SLICES = 2  # detection boxes of one lesion the masks missed lie on neighbouring slices (_unmasked_boxes)


@dataclass
class ModelInput:
    """One model input of the study (a radiograph frame or a volume) with its features for the decoder."""

    kind: str  # "cxr" | "ct" | "pet"
    features: Any
    probabilities: dict[str, float]
    findings: list[Finding]  # present findings from this input (the decoder's prompt context)
    radiograph: Radiograph | None = None
    volume: Volume | None = None


@dataclass
class Analysis:
    """A study's result of record and its model inputs (the decoder answers questions about them)."""

    result: StudyFindings
    inputs: list[ModelInput]


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


class BundleAdapter:
    """Loads a verified bundle once; ``predict`` and ``ask`` run per study."""

    def __init__(
        self,
        model_dir: Path | str,
        device: str = "auto",
        languages: tuple[str, ...] = LANGUAGES,
        threads: int | None = None,
        narrative: bool = True,
    ) -> None:
        from dicom_agent.inference.onnx_runner import BundleRunner  # ONNX Runtime is imported only here

        self.bundle = load_bundle(model_dir)  # refuses a tampered bundle before any graph is loaded
        self.runner = BundleRunner(model_dir, device=device, threads=threads, verify=False)
        self.vocabulary = self.bundle.vocabulary
        self.languages = tuple(lang for lang in languages if lang in LANGUAGES) or LANGUAGES[:1]
        self.narrative = narrative
        inputs = self.bundle.manifest.inputs
        config = self.runner.config
        cxr = inputs.get("cxr", {})
        self.image_size = int(cxr.get("size", config["image_size"]))
        self.cxr_keep_aspect = bool(cxr.get("keep_aspect", False))
        self.cxr_percentiles = tuple(cxr.get("percentiles", (0.5, 99.5)))
        self.lung_field = tuple(cxr.get("lung_field", DEFAULT_LUNG_FIELD))
        self.grids: dict[str, VolumeGrid] = {}
        self.windows: dict[str, tuple[float, float]] = {}
        self.dots: dict[str, dict[str, Any] | None] = {}  # manifest inputs.<kind>.dot: the fine-grid channels
        for kind, default_window in (("ct", (-1000.0, 400.0)), ("pet", (0.0, 10.0))):
            spec = inputs.get(kind, {})
            self.grids[kind] = VolumeGrid(
                depth=int(spec.get("depth", config["depth"])),
                size=int(spec.get("size", config["slice_size"])),
                keep_aspect=bool(spec.get("keep_aspect", False)),
                drawn=_drawn(spec.get("drawn")),
                fine=_drawn((spec.get("dot") or {}).get("fine")),
            )
            self.dots[kind] = spec.get("dot")
            low, high = spec.get("window", default_window)
            self.windows[kind] = (float(low), float(high))
        log.info(
            "bundle %s %s loaded (sha256 %s…)",
            self.bundle.manifest.name,
            self.bundle.manifest.version,
            self.bundle.sha256[:12],
        )

    @property
    def providers(self) -> list[str]:
        return list(self.runner.providers)

    # ---- predict -------------------------------------------------------------------------------------------
    def predict(self, study: StudyInput) -> StudyFindings:
        return self.analyse(study, narrative=self.narrative).result

    def analyse(
        self,
        study: StudyInput,
        narrative: bool = False,
        replace_pixels: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Analysis:
        """The study's findings and, per model input, what the decoder needs to answer about it.

        ``replace_pixels`` swaps the model input (after preprocessing) for an evaluation control such as a
        blank image; the node never sets it."""
        timer = _Timer()
        start = time.perf_counter()
        selection = select_series(study)
        if selection.empty:
            raise PermanentInferenceError(
                f"no radiograph, CT or PET series in study (modalities: {', '.join(selection.ignored) or 'none'})"
            )
        swap = replace_pixels or (lambda x: x)
        findings: list[Finding] = []
        inputs: list[ModelInput] = []
        flags = [f"ignored_modality:{m}" for m in selection.ignored]
        for series in selection.radiographs:
            with timer.stage("preprocess_s"):
                radiographs = [r for path in sorted(series.files) for r in self._radiographs(path, study)]
            if not radiographs:
                continue
            with timer.stage("heads_s"):
                results = self.runner.run_2d(swap(np.stack([self._normalize_cxr(r) for r in radiographs])))
            with timer.stage("map_back_s"):
                for radiograph, result in zip(radiographs, results, strict=True):
                    mine = self._findings_2d(radiograph, result)
                    findings.extend(mine)
                    inputs.append(ModelInput("cxr", result.features, result.probabilities, mine, radiograph=radiograph))
                    flags.extend(f for f in radiograph.flags if f not in flags)
        for kind, series in selection.volumes.items():
            with timer.stage("preprocess_s"):
                volume = load_volume(series.files, self.grids[kind], study.study_instance_uid)
                model_input = swap(window(volume.values, *self.windows[kind]))
                dot = self._dot(kind, volume)
            flags.extend(f for f in volume.flags if f not in flags)
            with timer.stage("heads_s"):
                result3d = self.runner.run_3d(model_input, kind, dot)
            with timer.stage("map_back_s"):
                mine = self._findings_3d(kind, volume, result3d)
                findings.extend(mine)
            inputs.append(ModelInput(kind, result3d.features, result3d.probabilities, mine, volume=volume))
        absent, unplaced = self._absent(findings, inputs)
        findings.extend(absent)
        with timer.stage("render_s"):
            impression = render(findings, self.languages, self.vocabulary)
        texts: dict[str, str] = {}
        if narrative and inputs:
            with timer.stage("narrative_s"):
                for lang in self.languages:
                    parts = [self._generate(i, "report", lang) for i in inputs]
                    texts[lang] = join_sentences((t.strip() for t in parts), lang)
                    flags.extend(flag_disagreements(findings, texts[lang], lang, self.vocabulary))
        timer.timings["total_s"] = time.perf_counter() - start
        study_findings = StudyFindings(
            study_instance_uid=study.study_instance_uid,
            model=self.bundle.identity,
            findings=findings,
            impression=impression,
            narrative=texts,
            key_images=_key_images(findings),
            series_uids=selection.series_uids,
            flags=flags,
            timings=timer.timings,
            extra={
                "providers": self.providers,
                "probabilities": _probabilities(findings) | unplaced,
                "unplaced": {key: self._unplaced_entry(key, p) for key, p in unplaced.items()},
            },
        )
        return Analysis(study_findings, inputs)

    def _generate(self, item: ModelInput, task: str, lang: str, question: str | None = None) -> str:
        """Decoder text about one input; the prompt carries that input's findings when the bundle takes them."""
        findings = None
        if self.runner.takes_findings:
            runner = self.runner
            findings = prompt_findings(
                item.findings, lang, self.vocabulary, question, runner.takes_uptake, runner.takes_answer_forms
            )
        return str(self.runner.generate(item.features, task, lang, question, findings=findings)).strip()

    def _absent(self, findings: list[Finding], inputs: list[ModelInput]) -> tuple[list[Finding], dict[str, float]]:
        """One absent finding (TID 1501 "Absent" with its probability) per label the study was examined for and
        not found, and the labels left *unplaced*: present by probability on some input, but reported nowhere
        because no region was theirs (:meth:`_findings_2d`). Those are not stated absent, which a probability at
        or above the threshold would contradict; they are listed with it (``extra["unplaced"]``) and the draft
        SR's comment names them: on 60 validation radiographs 11 studies had one, 4 of them a drawn finding."""
        present = {f.label for f in findings if f.present}
        best: dict[str, float] = {}
        unplaced: dict[str, float] = {}
        for item in inputs:
            for key, probability in item.probabilities.items():
                if key in present or key not in self.vocabulary.labels or not self._applies(key, item.kind):
                    continue
                best[key] = max(best.get(key, 0.0), float(probability))
                if probability >= self.runner.threshold_of(item.kind, key):
                    unplaced[key] = best[key]
        absent = [self._finding(self.vocabulary.labels[key], p, present=False) for key, p in best.items()]
        return [f for f in absent if f.label not in unplaced], unplaced

    def _unplaced_entry(self, key: str, probability: float) -> dict[str, Any]:
        """An unplaced label as the draft SR's comment names it (:func:`~.agreement.unplaced_comment`)."""
        spec = self.vocabulary.labels[key]
        return {"probability": probability, "name_en": spec.name_en, "name_zh": spec.name_zh}

    def _applies(self, key: str, kind: str) -> bool:
        """Whether the label is one the bundle reports for this kind of input (manifest ``modalities``)."""
        spec = next((lab for lab in self.runner.labels if lab.key == key), None)
        if spec is None or not spec.modalities:
            return True
        dicom = {"cxr": ("CR", "DX"), "ct": ("CT",), "pet": ("PT",)}[kind]
        return kind in spec.modalities or any(m in spec.modalities for m in dicom)

    # ---- ask -----------------------------------------------------------------------------------------------
    def ask(self, study: StudyInput, question: str, lang: str = "en") -> str:
        """VQA with the decoder on the study's first model input (radiograph, else CT, else PET), its prompt
        carrying that input's findings (bundles trained so) — the answer binds to the result of record."""
        return self.answer(self.analyse(study), question, lang)

    def answer(self, analysis: Analysis, question: str, lang: str = "en") -> str:
        """One question about an analysed study (analyse once, ask many)."""
        if lang not in LANGUAGES:
            raise ValueError(f"unsupported language {lang!r}")
        if not analysis.inputs:
            raise PermanentInferenceError("no radiograph, CT or PET image in study to answer about")
        return self._generate(analysis.inputs[0], "vqa", lang, question)

    def check_answer(self, analysis: Analysis, question: str, lang: str, answer: str) -> str | None:
        """A note when ``answer`` contradicts the findings of record it was asked about (see
        :func:`~dicom_agent.inference.agreement.answer_disagreement`), else None."""
        if not analysis.inputs:
            return None
        unplaced = {k: float(v["probability"]) for k, v in analysis.result.extra.get("unplaced", {}).items()}
        return answer_disagreement(question, answer, lang, analysis.inputs[0].findings, self.vocabulary, unplaced)

    # ---- radiographs ---------------------------------------------------------------------------------------
    def _radiographs(self, path: Path, study: StudyInput) -> list[Radiograph]:
        return load_radiographs(path, self.image_size, study.study_instance_uid, keep_aspect=self.cxr_keep_aspect)

    def _normalize_cxr(self, radiograph: Radiograph) -> np.ndarray:
        """The manifest's intensity step: percentiles of the image content (padding excluded) to 0 and 1."""
        grid = radiograph.grid
        inner = radiograph.pixels[
            grid.pad_top : grid.pad_top + grid.inner_rows, grid.pad_left : grid.pad_left + grid.inner_cols
        ]
        low, high = np.percentile(inner, self.cxr_percentiles)
        out = np.clip((radiograph.pixels - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)
        padding = np.ones_like(out, dtype=bool)
        padding[grid.pad_top : grid.pad_top + grid.inner_rows, grid.pad_left : grid.pad_left + grid.inner_cols] = False
        out[padding] = 0.0
        return out

    def _findings_2d(self, radiograph: Radiograph, result: Any) -> list[Finding]:
        """One radiograph's findings. A focal finding is reported with a place or not at all: a label present by
        probability with no box (none at ``box_min_score``, or each on a region another label claimed,
        :func:`_claim_by_score`) is unplaced (see :meth:`_absent`). On 300 validation radiographs (bundle
        0.10.1) 16 focal findings had no box at all (probabilities 0.09-0.42) and 1 of them was drawn; the text
        said "Consolidation." with no lobe."""
        grid = radiograph.grid
        out: list[Finding] = []
        row_mm, col_mm = radiograph.spacing_mm or (None, None)
        labels = self.vocabulary.labels
        shape = result.mask_probs.shape[-2:]
        focal = {
            key: [b for b in result.boxes if b.label == key]
            for key in result.present
            if key in labels and labels[key].focal
        }
        claimed = _claim_by_score(focal, lambda b: _box_region(b, shape))
        for key in result.present:
            spec = labels.get(key)
            if spec is None:
                continue
            probability = float(result.probabilities[key])
            label_mask = result.masks.get(key)
            core = result.cores.get(key)
            if spec.focal:
                for detected in claimed[key][:MAX_LESIONS_PER_LABEL]:
                    x0, y0, x1, y1 = grid.box_to_source(detected.x0, detected.y0, detected.x1, detected.y1)
                    fx = ((detected.x0 + detected.x1) / 2 - grid.pad_left) / grid.inner_cols
                    fy = ((detected.y0 + detected.y1) / 2 - grid.pad_top) / grid.inner_rows
                    location, side = cxr_location(fx, fy, self.lung_field)
                    size = max((x1 - x0) * col_mm, (y1 - y0) * row_mm) if col_mm and row_mm else None
                    mask = None
                    if label_mask is not None:
                        region = _box_region(detected, label_mask.shape, margin=1)
                        mask = self._mask_2d(radiograph, label_mask & region)
                        if core is not None and self.runner.box_source.get("cxr", {}).get(key) == "mask":
                            # the box outlines the faint mask: the size is measured on its confident core
                            extent = _extent_mm(core & region, radiograph)
                            size = max(extent) if extent else size
                    if mask is not None:
                        size = self._source_size("cxr", _grid_2d(radiograph), key, mask.pixels[0]) or size
                    out.append(
                        self._finding(
                            spec,
                            probability,
                            location=location,
                            laterality=side,
                            size_mm=size,
                            boxes=[Box(radiograph.ref, x0, y0, x1, y1, score=float(detected.score))],
                            mask=mask,
                            size_on=0,
                        )
                    )
            else:
                out.extend(self._sided_2d(spec, probability, radiograph, label_mask, core))
        return out

    def _sided_2d(
        self,
        spec: LabelSpec,
        probability: float,
        radiograph: Radiograph,
        label_mask: np.ndarray | None,
        core: np.ndarray | None = None,
    ) -> list[Finding]:
        """A non-focal finding per side its mask covers (a bilateral effusion is two findings), else one;
        an effusion's size is its fluid height, on the side's ``core`` when it has one."""
        grid = radiograph.grid
        if label_mask is None or label_mask.sum() < MIN_PART_PIXELS:
            return [self._finding(spec, probability)]
        if spec.key in self.runner.unsided.get("cxr", ()):
            return [self._finding(spec, probability, mask=self._mask_2d(radiograph, label_mask))]
        midline = grid.pad_left + grid.inner_cols / 2
        out = []
        for side, part in _sides(label_mask, midline):
            measured = part & core if core is not None and (part & core).any() else part
            size = _fluid_height_mm(measured, radiograph) if spec.key == "pleural_effusion" else None
            out.append(
                self._finding(
                    spec,
                    probability,
                    location=self._side_location(side),
                    laterality=side,
                    size_mm=size,
                    mask=self._mask_2d(radiograph, part),
                )
            )
        return out or [self._finding(spec, probability)]

    def _mask_2d(self, radiograph: Radiograph, model_mask: np.ndarray) -> Mask | None:
        source = radiograph.grid.mask_to_source(model_mask)
        if not source.any():
            return None
        return Mask(radiograph.ref.series_instance_uid, [radiograph.ref], source[None])

    # ---- volumes -------------------------------------------------------------------------------------------
    def _dot(self, kind: str, volume: Volume) -> np.ndarray | None:
        """The volume's fine-grid channels (K,D,s,s) where the bundle takes them (manifest ``inputs.<kind>.dot``),
        from its values on the finer grid, windowed as the model input is. 0.17.0 lists one dot filter without
        ``channels``."""
        spec = self.dots.get(kind)
        if spec is None or volume.fine is None or volume.fine_spacing is None:
            return None
        values = window(volume.fine, *self.windows[kind])
        channels = spec.get("channels") or [{"filter": "dot", "sigmas_mm": spec["sigmas_mm"], "scale": spec["scale"]}]
        return fine_channels(values, volume.fine_spacing, volume.values.shape, channels)

    def _findings_3d(self, kind: str, volume: Volume, result: Any) -> list[Finding]:
        """One volume's findings: a focal label's lesions are its mask components (one label per region) that hold
        a detection, then its boxes outside every component; a non-focal label is reported per side."""
        out: list[Finding] = []
        sites = _site_map(kind, volume)
        grid = _grid_3d(volume, self.windows[kind]) if self.runner.size_fraction.get(kind) else None
        labels = self.vocabulary.labels
        focal_keys = {key for key in result.present if key in labels and labels[key].focal}
        components_of = {
            key: _components(result.masks[key], MIN_LESION_VOXELS if key in focal_keys else MIN_PART_PIXELS)
            for key in result.present
            if key in result.masks
        }
        focal = {key: parts for key, parts in components_of.items() if key in focal_keys}
        components_of.update(_claim_by_probability(focal, result.probabilities, _itself))
        covered = np.zeros(volume.values.shape, dtype=bool)
        reported = np.zeros_like(covered)
        for key in focal:
            for component in components_of[key]:
                covered |= component
            components_of[key] = _detected(components_of[key], result.boxes, key, self.runner.box_min_score)
            for component in components_of[key][:MAX_LESIONS_PER_LABEL]:
                reported |= component
        if kind == "ct" and volume.unit == "HU":
            _settle_by_bronchograms(components_of, volume)
        for key in result.present:
            spec = labels.get(key)
            if spec is None:
                continue
            probability = float(result.probabilities[key])
            label_mask = result.masks.get(key)
            components = components_of.get(key, [])
            if spec.focal:
                kept = components[:MAX_LESIONS_PER_LABEL]
                for component in kept:
                    lesion = self._lesion_3d(spec, probability, volume, component, result, sites, kind, grid)
                    if lesion is not None:
                        out.append(lesion)
                for detected in _unmasked_boxes(result.boxes, key, covered, reported, self.runner.box_min_score)[
                    : MAX_LESIONS_PER_LABEL - len(kept)
                ]:
                    lesion = self._box_only_3d(spec, probability, volume, detected, result, sites, kind, grid)
                    if lesion is not None:
                        out.append(lesion)
            elif components:
                out.extend(self._sided_3d(kind, spec, probability, volume, label_mask))
            else:
                out.append(self._finding(spec, probability))
        return _one_lesion_by_size(out) if kind == "ct" else out

    def _lesion_3d(
        self,
        spec: LabelSpec,
        probability: float,
        volume: Volume,
        component: np.ndarray,
        result: Any,
        sites: LungMap | PetOrganMap | None,
        kind: str = "",
        grid: SourceGrid | None = None,
        outlined: bool = True,
    ) -> Finding | None:
        """One lesion from its model-grid voxels (a mask component; with ``outlined`` False a detection box's
        voxels, which give no SEG mask), mapped back onto the source series."""
        source = volume.mask_to_source(component)
        sx, sy, _ = volume.source_spacing
        outline = boxes_from_mask(source)  # (source slice, box) per slice the lesion covers
        score = _component_score(component, result.boxes, spec.key, probability)
        boxes = [Box(volume.slices[k], *box, score=score) for k, box in outline]
        if not boxes:  # smaller than a source voxel after resampling: its best detection box stands for it
            best = next((b for b in result.boxes if b.label == spec.key), None)
            if not outlined or best is None:
                return None
            return self._box_only_3d(spec, probability, volume, best, result, sites, kind, grid)
        core = result.cores.get(spec.key)
        measured = boxes_from_mask(volume.mask_to_source(component & core)) if core is not None else []
        widest, size = max(  # the core, if any: (source slice, extent in mm) of its widest slice
            ((k, max((x1 - x0) * sx, (y1 - y0) * sy)) for k, (x0, y0, x1, y1) in measured or outline),
            key=lambda ks: ks[1],
        )
        size = self._source_size(kind, grid, spec.key, source) or size  # round lesions: on the acquired voxels
        z, y, x = (float(v) for v in np.argwhere(component).mean(axis=0))
        location, side = sites.location(z, y, x) if sites is not None else (None, _side(volume, x))
        suv_max, suv_on = _uptake(volume, source, boxes)
        if suv_max is not None and suv_max < MIN_LESION_SUV:
            return None  # no hotter than the blood pool: not a hypermetabolic lesion
        return self._finding(
            spec,
            probability,
            location=location,
            laterality=side,
            size_mm=size,
            boxes=boxes,
            mask=Mask(volume.slices[0].series_instance_uid, list(volume.slices), source) if outlined else None,
            suv_max=suv_max,
            size_on=_box_on(boxes, volume.slices[widest]),
            suv_on=suv_on,
        )

    def _box_only_3d(
        self,
        spec: LabelSpec,
        probability: float,
        volume: Volume,
        detected: DetectedBox,
        result: Any,
        sites: LungMap | PetOrganMap | None,
        kind: str = "",
        grid: SourceGrid | None = None,
    ) -> Finding | None:
        """A focal lesion the detector found where no mask component lies: the box's model voxels stand for it
        as a component does (its boxes on every source slice of its model slice, its centre, SUVmax and size),
        without a SEG mask of its own. Until 0.10.2 it had one box on the nearest source slice and no size."""
        on_grid = np.zeros(volume.values.shape, dtype=bool)
        rows = slice(int(detected.y0), int(np.ceil(detected.y1)))
        on_grid[int(detected.z or 0), rows, int(detected.x0) : int(np.ceil(detected.x1))] = True
        return self._lesion_3d(spec, probability, volume, on_grid, result, sites, kind, grid, outlined=False)

    def _sided_3d(
        self, kind: str, spec: LabelSpec, probability: float, volume: Volume, label_mask: np.ndarray
    ) -> list[Finding]:
        """As :meth:`_sided_2d`, on the volume's grid."""
        uid = volume.slices[0].series_instance_uid
        if spec.key in self.runner.unsided.get(kind, ()):
            source = self._fluid_on_source(kind, spec.key, volume, volume.mask_to_source(label_mask))
            mask = Mask(uid, list(volume.slices), source) if source.any() else None
            return [self._finding(spec, probability, mask=mask)]
        out = []
        for side, part in _sides(label_mask, volume.values.shape[2] / 2):
            source = self._fluid_on_source(kind, spec.key, volume, volume.mask_to_source(part))
            if not source.any():
                continue
            out.append(
                self._finding(
                    spec,
                    probability,
                    location=self._side_location(side),
                    laterality=side,
                    mask=Mask(uid, list(volume.slices), source),
                )
            )
        return out or [self._finding(spec, probability)]

    def _fluid_on_source(self, kind: str, key: str, volume: Volume, source: np.ndarray) -> np.ndarray:
        """A fluid label's mask mapped to the source grid, kept to the acquired voxels at its fluid level
        (``decoding.fluid``, as ``onnx_runner.fluid_only`` does on the model grid), so the SEG stops at the
        fluid's edge at the series' own resolution instead of the model grid's steps onto aerated lung."""
        level = self.runner.fluid.get(kind, {}).get(key)
        if level is None or volume.unit != "HU":
            return source
        low, high = self.windows[kind]
        dense = source & (sitk.GetArrayViewFromImage(volume.source) >= low + level * (high - low))
        return dense if dense.any() else source

    # ---- shared --------------------------------------------------------------------------------------------
    def measurement_grid(self, item: ModelInput) -> SourceGrid | None:
        """The source values, spacing and intensity window that the lesion sizes of ``item`` are measured on
        (``inference.measure``); None without a pixel spacing."""
        if item.radiograph is not None:
            return _grid_2d(item.radiograph)
        return _grid_3d(item.volume, self.windows[item.kind]) if item.volume is not None else None

    def _source_size(self, kind: str, grid: SourceGrid | None, key: str, source_mask: np.ndarray) -> float | None:
        """A round lesion's equivalent diameter on the source grid where the manifest gives its label a size
        fraction (``decoding.size_fraction``, outlined at most ``decoding.size_reach`` pixels past the mask, counted
        between the samples for the labels in ``decoding.size_subvoxel``, by partial volume for those in
        ``decoding.size_partial_volume``), else None (the caller keeps its model-grid measurement)."""
        fraction = self.runner.size_fraction.get(kind, {}).get(key)
        if fraction is None or grid is None:
            return None
        reach = self.runner.size_reach.get(kind, {}).get(key, DELINEATION_REACH)
        between = key in self.runner.size_subvoxel.get(kind, set())
        return grid.diameter(source_mask, fraction, reach, between, self.runner.size_solid.get(kind, {}).get(key))

    def _side_location(self, side: str) -> str | None:
        """The vocabulary's side-only site for non-focal findings (e.g. ``right_pleura``), if it has one."""
        key = f"{side}_pleura"
        return key if key in self.vocabulary.locations else None

    def _finding(
        self,
        spec: LabelSpec,
        probability: float,
        *,
        location: str | None = None,
        laterality: str | None = None,
        size_mm: float | None = None,
        boxes: list[Box] | None = None,
        mask: Mask | None = None,
        flags: list[str] | None = None,
        present: bool = True,
        suv_max: float | None = None,
        size_on: int | None = None,
        suv_on: int | None = None,
    ) -> Finding:
        """A finding the heads called present (the runner applied the label's threshold), or an absent one."""
        loc = self.vocabulary.location(location)
        return Finding(
            label=spec.key,
            code=spec.code,
            name_en=spec.name_en,
            name_zh=spec.name_zh,
            probability=probability,
            present=present,
            critical=spec.critical,
            finding_site=loc.code if loc else None,
            location=location,
            location_en=loc.name_en if loc else None,
            location_zh=loc.name_zh if loc else None,
            laterality=laterality or (loc.laterality if loc else None),
            size_mm=round(float(size_mm), 1) if size_mm is not None else None,
            suv_max=round(float(suv_max), 1) if suv_max is not None else None,
            size_on=size_on if size_mm is not None else None,
            suv_on=suv_on if suv_max is not None else None,
            boxes=boxes or [],
            mask=mask,
            flags=flags or [],
        )


def _drawn(value: Any) -> tuple[float, float, float] | None:
    """The manifest's ``inputs.<kind>.drawn`` or ``inputs.<kind>.dot.fine`` ([x, y, z]); None where the bundle has
    none (a series resampled as it is; no finer grid)."""
    if value is None:
        return None
    x, y, z = (float(v) for v in value)
    return x, y, z


def _grid_2d(radiograph: Radiograph) -> SourceGrid | None:
    if radiograph.source_values is None or radiograph.spacing_mm is None:
        return None
    return SourceGrid(radiograph.source_values, radiograph.spacing_mm)


def _grid_3d(volume: Volume, window_range: tuple[float, float]) -> SourceGrid:
    """The source stack (a view, not a copy), (slice, row, column) like the source-grid masks, with the model's
    window for HU (above its top lies bone, not lesion); uptake is measured as it is: a PET window's top (10 SUV)
    is a display range, and clipped there a lesion of SUVmax 15 was outlined at a third of its peak, not half."""
    sx, sy, sz = volume.source_spacing
    return SourceGrid(
        sitk.GetArrayViewFromImage(volume.source), (sz, sy, sx), window_range if volume.unit == "HU" else None
    )


def _uptake(volume: Volume, region: np.ndarray, boxes: list[Box]) -> tuple[float | None, int | None]:
    """A PET lesion's SUVmax over its source-grid ``region`` and which of its per-slice ``boxes`` lies on the
    slice holding that voxel; (None, None) when the series has no SUV (no weight or dose: stored values only)."""
    if volume.unit != "SUV":
        return None, None
    peak = volume.peak_in(region)
    if peak is None:
        return None, None
    value, k = peak
    return value, _box_on(boxes, volume.slices[k])


def _box_on(boxes: list[Box], image: ImageRef) -> int | None:
    """Index of the box drawn on ``image`` (a lesion has at most one box per source slice)."""
    return next((i for i, b in enumerate(boxes) if b.image == image), None)


def _extent_mm(model_mask: np.ndarray, radiograph: Radiograph) -> tuple[float, float] | None:
    """(height, width) in mm of a model-grid mask's bounding box on the source image (None: empty mask or no
    pixel spacing)."""
    if radiograph.spacing_mm is None or not model_mask.any():
        return None
    rows, cols = np.flatnonzero(model_mask.any(axis=1)), np.flatnonzero(model_mask.any(axis=0))
    row_mm, col_mm = radiograph.spacing_mm
    height = (rows[-1] + 1 - rows[0]) / radiograph.grid.scale_y * row_mm
    width = (cols[-1] + 1 - cols[0]) / radiograph.grid.scale_x * col_mm
    return float(height), float(width)


def _fluid_height_mm(model_mask: np.ndarray, radiograph: Radiograph) -> float | None:
    """A radiograph effusion's height in mm: from its lowest pixel (the costophrenic angle) up to its fluid surface
    where that is lowest (medially: the meniscus climbs the lateral chest wall), the ``FLUID_SURFACE_PERCENTILE``
    of its columns' top rows, so that a stray column does not set it. The phantoms state that height; until
    session 35 the mask's whole height, meniscus included, was reported. On the phantoms' own masks (150
    validation radiographs) whole height +62 mm off the stated (median), this -1.8 mm; through 0.18.1's masks
    +47 mm and -19 mm (docs/runtime.md). None: empty mask or no pixel spacing."""
    if radiograph.spacing_mm is None or not model_mask.any():
        return None
    cols = np.flatnonzero(model_mask.any(axis=0))
    surface = float(np.percentile(model_mask[:, cols].argmax(axis=0), FLUID_SURFACE_PERCENTILE))
    bottom = int(np.flatnonzero(model_mask.any(axis=1))[-1]) + 1
    return float((bottom - surface) / radiograph.grid.scale_y * radiograph.spacing_mm[0])


def _sides(mask: np.ndarray, midline: float) -> list[tuple[str, np.ndarray]]:
    """The patient sides a non-focal mask covers, each with its part (columns are the last axis; low columns
    are the patient's right): a side needs ``MIN_PART_PIXELS`` and ``MIN_SIDE_SHARE`` of the larger side."""
    columns = np.arange(mask.shape[-1])
    parts = [(side, mask & half) for side, half in (("right", columns < midline), ("left", columns >= midline))]
    largest = max(int(part.sum()) for _, part in parts)
    return [(side, part) for side, part in parts if part.sum() >= max(MIN_PART_PIXELS, MIN_SIDE_SHARE * largest)]


def _components(mask: np.ndarray, min_voxels: int) -> list[np.ndarray]:
    """Connected components (26-connected) of at least ``min_voxels``, largest first."""
    if not mask.any():
        return []
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    counts = np.bincount(labels.ravel())[1:]
    order = np.argsort(-counts)
    return [labels == (i + 1) for i in order if counts[i] >= min_voxels]


Part = TypeVar("Part")


def _itself(mask: np.ndarray) -> np.ndarray:
    return mask


class _Claims:
    """One label per region: the pixels reported parts have claimed so far. A part lying mostly (over half its
    pixels) in claimed pixels is not free, so one region is not reported as a nodule, a mass and a consolidation
    at once."""

    def __init__(self) -> None:
        self.claimed: np.ndarray | None = None

    def free(self, pixels: np.ndarray) -> bool:
        return self.claimed is None or not _mostly_in(pixels, self.claimed)

    def claim(self, pixels: np.ndarray) -> None:
        self.claimed = pixels if self.claimed is None else self.claimed | pixels


def _claim_by_probability(
    parts: dict[str, list[Part]], probabilities: dict[str, float], area: Callable[[Part], np.ndarray]
) -> dict[str, list[Part]]:
    """Volumes: each label's mask components (largest first) claim in order of the label's probability; a label
    keeps its first component even where another claimed it: it stays present, as its probability says. (The
    radiographs' rule, boxes by score and no keeping, lost CT finding F1 on 60 validation volumes: 0.750 ->
    0.723; the components have no score of their own that compares across labels.)"""
    claims = _Claims()
    out: dict[str, list[Part]] = {}
    for key in sorted(parts, key=lambda k: -float(probabilities[k])):
        areas = [(part, area(part)) for part in parts[key]]
        kept = [(p, a) for p, a in areas if claims.free(a)] or areas[:1]
        out[key] = [p for p, _ in kept]
        for _, a in kept:
            claims.claim(a)
    return out


def _claim_by_score(
    boxes: dict[str, list[DetectedBox]], area: Callable[[DetectedBox], np.ndarray]
) -> dict[str, list[DetectedBox]]:
    """Radiographs: every focal box claims in order of its score (peak x the label's probability x its
    :func:`~dicom_agent.inference.onnx_runner.label_share`), across labels, so a region goes to the label
    with the most evidence there; a label all of whose boxes lay on regions others claimed is not reported
    (the caller drops it: unplaced, see BundleAdapter._absent). Bundle 0.10.1, 150 validation
    radiographs: finding F1 0.817 -> 0.852, finding + location 0.759 -> 0.799 (the label-order rule of 0.8.1
    kept a mass on every consolidation the mass channel also saw)."""
    claims = _Claims()
    out: dict[str, list[DetectedBox]] = {key: [] for key in boxes}
    for key, box in sorted(((k, b) for k, found in boxes.items() for b in found), key=lambda kb: -float(kb[1].score)):
        pixels = area(box)
        if claims.free(pixels):
            out[key].append(box)
            claims.claim(pixels)
    return out


def _settle_by_bronchograms(components_of: dict[str, list[np.ndarray]], volume: Volume) -> None:
    """CT: a region both a solid lesion's label (mass, nodule) and the consolidation label kept
    (:func:`_claim_by_probability` lets each keep its first) goes to the consolidation if it shows air
    bronchograms on the source HU, else to the solid lesion (:mod:`~dicom_agent.inference.signs`); the other label
    loses that region, and is unplaced if it had no other. Until session 22 both were reported: 15 of 18 validation
    CTs with a consolidation reported where none is drawn had a mass there. Nodules since session 36: of 18 false
    consolidations on 120 validation CTs, 4 lay over a drawn nodule ("Nodule in the right lower lobe, measuring 33
    mm. Consolidation in the right lower lobe, measuring 49 mm.")."""
    for solid in SOLID_LABELS:
        lesions, consolidations = components_of.get(solid, []), components_of.get("consolidation", [])
        if not lesions or not consolidations:
            continue
        hu = sitk.GetArrayViewFromImage(volume.source)
        lost_lesion: set[int] = set()
        lost_consolidation: set[int] = set()
        for i, lesion in enumerate(lesions):
            for j, consolidation in enumerate(consolidations):
                if j in lost_consolidation or not _shared(lesion, consolidation):
                    continue
                if has_air_bronchograms(hu, volume.mask_to_source(lesion | consolidation), volume.source_spacing):
                    lost_lesion.add(i)
                    break
                lost_consolidation.add(j)
        components_of[solid] = [c for i, c in enumerate(lesions) if i not in lost_lesion]
        components_of["consolidation"] = [c for j, c in enumerate(consolidations) if j not in lost_consolidation]


def _one_lesion_by_size(findings: list[Finding]) -> list[Finding]:
    """CT: a region reported both as a nodule and as a mass (:func:`_claim_by_probability` lets each label keep its
    first component) is one lesion, a mass if either states it over ``NODULE_MAX_MM`` and a nodule otherwise (the
    Fleischner Society glossary's line between the two); the other finding goes, and its label is unplaced if it
    had no other. Until session 25 both were reported ("Nodule in the right upper lobe, measuring 39 mm. Mass in the
    right upper lobe, measuring 39 mm."): 6 of 150 validation CTs."""

    def measured(label: str) -> list[tuple[Finding, np.ndarray, float]]:
        return [
            (f, f.mask.pixels, f.size_mm)
            for f in findings
            if f.label == label and f.mask is not None and f.size_mm is not None
        ]

    nodules = measured("nodule")
    dropped: set[int] = set()
    for mass, mass_pixels, mass_mm in measured("mass"):
        for nodule, nodule_pixels, nodule_mm in nodules:
            if id(nodule) in dropped or not _shared(nodule_pixels, mass_pixels):
                continue
            loser = nodule if max(nodule_mm, mass_mm) > NODULE_MAX_MM else mass
            dropped.add(id(loser))
            if loser is mass:
                break
    return [f for f in findings if id(f) not in dropped]


def _shared(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two parts are one region: either lies mostly in the other (as :class:`_Claims` judges a part)."""
    return _mostly_in(a, b) or _mostly_in(b, a)


def _mostly_in(part: np.ndarray, region: np.ndarray) -> bool:
    """Whether over half of ``part``'s pixels lie in ``region``."""
    return int(np.count_nonzero(part & region)) * 2 > int(np.count_nonzero(part))


def _box_region(box: Any, shape: tuple[int, ...], margin: int = 0) -> np.ndarray:
    """The pixels of a model-grid box (edges are pixel edges), grown by ``margin`` pixels, as a mask of ``shape``."""
    region = np.zeros(shape, dtype=bool)
    r0, r1 = int(np.floor(box.y0)) - margin, int(np.ceil(box.y1)) + margin
    c0, c1 = int(np.floor(box.x0)) - margin, int(np.ceil(box.x1)) + margin
    region[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return region


def _component_score(component: np.ndarray, boxes: list[Any], label: str, default: float) -> float:
    """The best detection score among the label's boxes whose centre falls inside the component."""
    best = None
    for b in boxes:
        if b.label != label or b.z is None:
            continue
        cy, cx = int((b.y0 + b.y1) / 2), int((b.x0 + b.x1) / 2)
        z = int(b.z)
        inside = 0 <= z < component.shape[0] and 0 <= cy < component.shape[1] and 0 <= cx < component.shape[2]
        if inside and component[z, cy, cx]:
            best = max(best or 0.0, float(b.score))
    return best if best is not None else default


def _unmasked_boxes(
    boxes: list[DetectedBox], label: str, covered: np.ndarray, reported: np.ndarray, min_score: float
) -> list[DetectedBox]:
    """The label's boxes (best first, at least ``min_score``) whose centre lies outside every focal mask
    component (``covered``, the model grid) and away from every component reported as a lesion (``reported``:
    not on the voxels it touches, on its slice or within MERGE_SLICES of it), one per lesion: a box whose centre
    falls within a kept box's extent on a slice within MERGE_SLICES of it is the same lesion seen on another
    slice. Until session 26 only the voxel under the centre on the box's own slice was looked at: a box a slice
    beside a reported lesion, or centred on the edge between its voxels, reported it twice."""
    kept: list[DetectedBox] = []
    for b in boxes:
        if b.label != label or b.z is None or b.score < min_score:
            continue
        z, cy, cx = int(b.z), (b.y0 + b.y1) / 2, (b.x0 + b.x1) / 2
        if covered[z, min(int(cy), covered.shape[1] - 1), min(int(cx), covered.shape[2] - 1)]:
            continue
        rows, cols = _touching(cy, covered.shape[1]), _touching(cx, covered.shape[2])
        if reported[max(z - MERGE_SLICES, 0) : z + MERGE_SLICES + 1, rows, cols].any():
            continue
        same = any(abs(z - int(k.z or 0)) <= MERGE_SLICES and k.x0 <= cx <= k.x1 and k.y0 <= cy <= k.y1 for k in kept)
        if not same:
            kept.append(b)
    return kept


def _touching(centre: float, size: int) -> slice:
    """The voxels (index k spans [k, k + 1)) whose centres lie within one voxel of a coordinate along one axis:
    the voxel holding it and its neighbour across the nearer edge, both where it falls on their shared edge (as a
    4-pixel box around a 2-voxel component's centre does), one where it is a voxel's centre."""
    low = min(max(int(np.floor(centre - 0.5)), 0), size - 1)
    high = min(max(int(np.floor(centre + 0.5)), 0), size - 1)
    return slice(low, high + 1)


def _detected(components: list[np.ndarray], boxes: list[DetectedBox], label: str, min_score: float) -> list[np.ndarray]:
    """A focal label's mask components that hold a detection box of at least ``min_score`` (the bar a radiograph's
    boxes and :func:`_unmasked_boxes` meet); its first (largest) if none does: the label stays present, as its
    probability says. Until 0.10.2 every component was a lesion: a CT consolidation present at 0.1 was reported in
    each lobe its faint mask touched. Bundle 0.10.1's graphs with 0.10.2's thresholds, two sets of 60 validation
    CTs: finding + location F1 0.601 -> 0.624 and 0.526 -> 0.542 (false pairs 59 -> 49, 46 -> 41; one missed pair
    more), finding F1 unchanged; PET unchanged."""
    kept = [c for c in components if _component_score(c, boxes, label, 0.0) >= min_score]
    return kept or components[:1]


def _site_map(kind: str, volume: Volume) -> LungMap | PetOrganMap | None:
    """Where lesions lie: lungs (lobes) on CT; lungs, mediastinum and liver on PET in SUV (uptake rules)."""
    if kind == "ct":
        return LungMap.from_hu(volume.values)
    if kind == "pet" and volume.unit == "SUV":  # the organ rules are SUV thresholds
        sx, sy, sz = volume.model_spacing
        return PetOrganMap.from_suv(volume.values, (sz, sy, sx))
    return None


def _side(volume: Volume, x: float) -> str:
    """Canonical LPS grid: low columns are the patient's right."""
    return "right" if x < volume.values.shape[2] / 2 else "left"


def _key_images(findings: list[Finding]) -> list[ImageRef]:
    """Per present finding the image that best shows it: its largest box, else its mask's fullest image."""
    keys: list[ImageRef] = []
    for finding in findings:
        if not finding.present:
            continue
        ref: ImageRef | None = None
        if finding.boxes:
            ref = max(finding.boxes, key=lambda b: (b.x1 - b.x0) * (b.y1 - b.y0)).image
        elif finding.mask is not None and finding.mask.pixels.any():
            counts = finding.mask.pixels.reshape(len(finding.mask.images), -1).sum(axis=1)
            ref = finding.mask.images[int(np.argmax(counts))]
        if ref is not None and ref not in keys:
            keys.append(ref)
    return keys


def _probabilities(findings: list[Finding]) -> dict[str, float]:
    out: dict[str, float] = {}
    for f in findings:
        out[f.label] = max(out.get(f.label, 0.0), f.probability)
    return out
