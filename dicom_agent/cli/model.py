"""``model train | export | calibrate | eval``: build, export and measure the bundled model (design notes).

The heavy imports (torch, the phantom generator) happen inside the commands so the CLI starts fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from dicom_agent.cli.common import fail, out

app = typer.Typer(help="Train, export and evaluate the bundled model (synthetic phantoms; not for clinical use).")

DEFAULT_RUN = Path("models/runs/latest")
DEFAULT_BUNDLE = Path("models/bundled")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


@app.command()
def train(
    steps: Annotated[int | None, typer.Option(min=1, help="stage-1 steps (default: the shipped recipe)")] = None,
    steps2: Annotated[int | None, typer.Option(min=0, help="stage-2 steps (default: same as --steps)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="run directory")] = DEFAULT_RUN,
    seed: Annotated[int, typer.Option(help="torch/numpy seed of the run")] = 0,
    cases_cxr: Annotated[int | None, typer.Option(min=8, help="training radiographs")] = None,
    cases_volume: Annotated[int | None, typer.Option(min=4, help="training volumes per modality (CT, PET)")] = None,
    threads: Annotated[int, typer.Option(min=1)] = 2,
    stage1_from: Annotated[
        Path | None,
        typer.Option(help="run directory whose stage-1 model (stage1.pt) to train stage 2 on, instead of stage 1"),
    ] = None,
    vision_from: Annotated[
        Path | None,
        typer.Option(help="bundle whose network (read back) and tokenizer stage 2 continues from, instead of stage 1"),
    ] = None,
    context: Annotated[
        bool | None, typer.Option("--context/--no-context", help="findings text in the decoder prompts (stage 2)")
    ] = None,
    qa_balance: Annotated[
        bool | None, typer.Option("--qa-balance/--no-qa-balance", help="stage-2 questions sampled by kind")
    ] = None,
    qa_weight: Annotated[
        list[str] | None,
        typer.Option(help="KIND=WEIGHT: how often a stage-2 question kind is drawn, against 1 (repeatable)"),
    ] = None,
    context_swap: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="share of stage-2 questions about counterfactual findings (text only)"),
    ] = None,
) -> None:
    """Two-stage training budgeted by steps; writes checkpoint.pt, stage1.pt, tokenizer.json, history.json."""
    _logging()
    try:
        from models.train import TrainConfig
        from models.train import train as run_train
    except ImportError as exc:
        fail(f"training needs the project checkout (models/): {exc}")
    cfg = TrainConfig(seed=seed, threads=threads)
    if steps is not None:
        cfg.steps1 = steps
        cfg.steps2 = steps if steps2 is None else steps2
    elif steps2 is not None:
        cfg.steps2 = steps2
    if cases_cxr is not None:
        cfg.n_cxr = cases_cxr
        cfg.n_val = min(cfg.n_val, cases_cxr)
    if cases_volume is not None:
        cfg.n_ct = cfg.n_pet = cases_volume
        cfg.n_val = min(cfg.n_val, cases_volume)
    if context is not None:
        cfg.context = context
    if qa_balance is not None:
        cfg.qa_balance = qa_balance
    if qa_weight:
        cfg.qa_weights = _weights(qa_weight)
    if context_swap is not None:
        cfg.context_swap = context_swap
    if stage1_from is not None and not (stage1_from / "stage1.pt").is_file():
        fail(f"{stage1_from} has no stage1.pt (a run of this version of `dicom-agent model train` writes one)")
    if vision_from is not None and not (vision_from / "manifest.json").is_file():
        fail(f"{vision_from} is not a bundle (no manifest.json)")
    if vision_from is not None and stage1_from is not None:
        fail("--vision-from and --stage1-from both give stage 2 its start: choose one")
    ckpt = run_train(cfg, out_dir, stage1_from, vision_from)
    out(f"checkpoint {ckpt}")


def _weights(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        kind, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            fail(f"--qa-weight wants KIND=WEIGHT, got {item!r}")
        if weight < 0:
            fail(f"--qa-weight {item!r}: weights are not negative")
        out[kind.strip()] = weight
    return out


@app.command()
def export(
    run_dir: Annotated[
        Path, typer.Option("--run", help="run directory with checkpoint.pt + tokenizer.json")
    ] = DEFAULT_RUN,
    out_dir: Annotated[Path, typer.Option("--out", help="bundle directory")] = DEFAULT_BUNDLE,
    int8: Annotated[bool, typer.Option(help="dynamic int8 quantization of enc2d and dec_step")] = False,
    box_cases: Annotated[
        int,
        typer.Option(
            "--calibration-cases",
            "--box-cases",
            min=0,
            help="validation phantoms per kind that choose each label's mask threshold and box source (0: defaults)",
        ),
    ] = 300,
    allow_collapsed: Annotated[
        bool, typer.Option(help="export a run whose stage 1 left a label's masks collapsed (refused by default)")
    ] = False,
) -> None:
    """Export ONNX graphs (opset 18, dynamic batch) + tokenizer + manifest.json into the bundle directory."""
    _logging()
    ckpt, tok = run_dir / "checkpoint.pt", run_dir / "tokenizer.json"
    if not ckpt.is_file() or not tok.is_file():
        fail(f"{run_dir} has no checkpoint.pt/tokenizer.json (run `dicom-agent model train` first)")
    from models.export import CollapsedMasks, write_bundle

    try:
        manifest = write_bundle(ckpt, tok, out_dir, int8=int8, box_cases=box_cases, allow_collapsed=allow_collapsed)
    except CollapsedMasks as exc:
        fail(str(exc))
    total = sum((out_dir / f["path"]).stat().st_size for f in manifest["files"].values())
    out(f"bundle {out_dir} ({total / 1e6:.1f} MB): {', '.join(manifest['files'])}")


@app.command()
def calibrate(
    bundle: Annotated[Path, typer.Option(help="bundle directory")] = DEFAULT_BUNDLE,
    cases: Annotated[int, typer.Option(min=5, help="validation phantoms per kind")] = 300,
    size_cases: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="validation phantoms per kind written as DICOM to choose the size outlines "
            "(default: --cases, at most 300)",
        ),
    ] = None,
) -> None:
    """Re-choose a bundle's decoding (decision threshold, mask threshold, delineation, fluid level and water band,
    box source, the boxes' weighing by their own masks' support, rival boxes' factor, the radiograph opacity model,
    boxes drawn as their masks' outlines, whether masks give a side and the source-grid size fraction, per label)
    on validation phantoms and record it in manifest.json; the graphs are unchanged, so no checkpoint is needed."""
    _logging()
    from models.decoding import write_calibration

    decoding = write_calibration(bundle, cases, size_cases=size_cases)["decoding"]
    for kind, levels in decoding.get("thresholds", {}).items():
        out(f"{kind} present at probability: " + ", ".join(f"{k} {v:g}" for k, v in levels.items()))
    for kind, levels in decoding["mask_thresholds"].items():
        out(f"{kind} mask thresholds: " + ", ".join(f"{k} {v:g}" for k, v in levels.items()))
    for kind, fractions in decoding.get("delineation", {}).items():
        out(
            f"{kind} lesions outlined at a fraction of their peak: "
            + ", ".join(f"{k} {v:g}" for k, v in fractions.items())
        )
    bands = decoding.get("fluid_band", {})
    for kind, levels in decoding.get("fluid", {}).items():
        band = bands.get(kind, {})
        out(
            f"{kind} masks kept to fluid density at: "
            + ", ".join(
                f"{k} {v:g}" + (f" within {band[k][0]:g}-{band[k][1]:g}" if k in band else "")
                for k, v in levels.items()
            )
        )
    for kind, sources in decoding["box_source"].items():
        out(f"{kind} boxes from masks: " + ", ".join(sources))
    for kind, factor in decoding.get("rival_factor", {}).items():
        out(f"{kind} boxes beaten on their place by another focal label's scored x{factor:g}")
    for kind, region in decoding.get("region_model", {}).items():
        out(f"{kind} focal boxes weighed by what their opacity looks like (power {region['power']:g})")
    for kind, power in decoding.get("support_power", {}).items():
        out(f"{kind} focal boxes weighed by their own segmentation's support (power {power:g})")
    for kind, keys in decoding.get("box_outline", {}).items():
        out(f"{kind} boxes drawn as their mask's outline: " + ", ".join(keys))
    for kind, keys in decoding["unsided"].items():
        out(f"{kind} reported without a side (masks do not tell it): " + ", ".join(keys))
    reaches = decoding.get("size_reach", {})
    between = decoding.get("size_subvoxel", {})
    partial = decoding.get("size_partial_volume", {})
    for kind, fractions in decoding.get("size_fraction", {}).items():
        reach, sub, solid = reaches.get(kind, {}), set(between.get(kind, [])), partial.get(kind, {})
        out(
            f"{kind} sizes outlined on the source grid at: "
            + ", ".join(
                f"{k} {v:g}"
                + (f" within {reach[k]} px" if k in reach else "")
                + (" between the samples" if k in sub else "")
                + (f" by partial volume against {solid[k]:g}" if k in solid else "")
                for k, v in fractions.items()
            )
        )


@app.command("eval")
def evaluate(
    bundle: Annotated[Path, typer.Option(help="bundle directory")] = DEFAULT_BUNDLE,
    cases: Annotated[int, typer.Option(min=4, help="held-out cases per modality")] = 300,
    vqa_cases: Annotated[int, typer.Option(min=0, help="cases per modality whose VQA pairs are decoded")] = 100,
    corruptions: Annotated[bool, typer.Option(help="also measure under noise/blur/contrast corruptions")] = True,
    report_cases: Annotated[
        int, typer.Option(min=0, help="cases per modality written as DICOM and run through the adapter (text F1)")
    ] = 100,
    narrative_cases: Annotated[
        int, typer.Option(min=0, help="of the report cases, the first ones whose decoder narrative is checked (slow)")
    ] = 40,
    oor_cases: Annotated[int, typer.Option(min=0, help="out-of-range cases per modality")] = 100,
    finer_cases: Annotated[
        int, typer.Option(min=0, help="CT and PET cases drawn finer than the training data (thin slices)")
    ] = 100,
    write: Annotated[bool, typer.Option(help="write the metrics into manifest.json")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write all metrics as JSON here")] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="processes the phantoms and the runtime's cases run in (same figures)")
    ] = 2,
) -> None:
    """Held-out synthetic evaluation of a bundle (ONNX Runtime): AUROC, ECE, mAP@0.5, Dice, slice hits, VQA."""
    _logging()
    from models.evaluate import EvalConfig, format_tables, run_eval

    cfg = EvalConfig(
        cases=cases,
        oor_cases=oor_cases,
        finer_cases=finer_cases,
        vqa_cases=vqa_cases,
        corruptions=corruptions,
        report_cases=report_cases,
        narrative_cases=narrative_cases,
        workers=workers,
    )
    metrics = run_eval(bundle, cfg)
    out(format_tables(metrics))
    if json_out is not None:
        import json

        json_out.write_text(json.dumps(metrics, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    if write:
        from models.evaluate import write_metrics

        write_metrics(bundle, metrics)
        out(f"metrics written into {bundle / 'manifest.json'}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="model")
