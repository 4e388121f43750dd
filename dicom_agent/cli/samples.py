"""``samples make``: synthetic studies (chest radiograph, chest CT, FDG PET) with ground truth beside them.

The committed ``samples/`` folder is exactly what ``dicom-agent samples make samples`` writes (a test checks it
byte for byte), so the README demo and the tests share one source of truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dicom_agent.cli.common import fail, out

KINDS = ("cxr", "ct", "pet")
TRANSFER_SYNTAXES = ("explicit", "rle", "jpeg2000", "jpegls")  # models.synthetic.dicom_writer.TRANSFER_SYNTAXES

# What the committed samples are: kind -> (seed, in-plane size, depth, transfer syntax). The seeds are picked so
# that each study shows several findings (see samples/README.md).
SAMPLE_SPECS: dict[str, tuple[int, int, int | None, str]] = {
    "cxr": (52, 512, None, "explicit"),
    "ct": (56, 256, 64, "rle"),
    "pet": (5, 128, 96, "explicit"),
}

app = typer.Typer(help="Synthetic studies with known ground truth.", no_args_is_help=True)


def make_samples(
    out_dir: Path,
    kinds: tuple[str, ...] = KINDS,
    seed: int | None = None,
    transfer_syntax: str | None = None,
    size: int | None = None,
    depth: int | None = None,
) -> list[Path]:
    """Write one study per kind into ``out_dir/<kind>/``; returns the study folders. ``size`` and ``depth``
    replace the committed samples' pixels per side and (CT, PET) slice count, a thin-slice CT for instance. The
    seed's anatomy stays; its lesions are drawn anew at that resolution, so they differ from the committed
    sample's (ground_truth.json says what they are)."""
    from models.synthetic import make_case
    from models.synthetic.dicom_writer import write_case

    written = []
    for kind in kinds:
        default_seed, default_size, default_depth, syntax = SAMPLE_SPECS[kind]
        case = make_case(
            kind,
            default_seed if seed is None else seed,
            size=size or default_size,
            depth=(depth or default_depth) if kind != "cxr" else None,
        )
        study = write_case(case, out_dir / kind, transfer_syntax=transfer_syntax or syntax)
        written.append(study.directory)
    return written


@app.command()
def make(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the studies into (one sub-folder per kind).")],
    kind: Annotated[str, typer.Option(help="cxr, ct, pet or all.")] = "all",
    seed: Annotated[int | None, typer.Option(help="Phantom seed (default: the committed samples' seeds).")] = None,
    transfer_syntax: Annotated[
        str | None,
        typer.Option(
            "--transfer-syntax", help="explicit, rle, jpeg2000 or jpegls (lossless; default: as the committed samples)."
        ),
    ] = None,
    size: Annotated[
        int | None, typer.Option(min=64, max=1024, help="Pixels per side (default: as the committed samples).")
    ] = None,
    depth: Annotated[
        int | None, typer.Option(min=16, max=512, help="CT/PET slices (default: as the committed samples).")
    ] = None,
) -> None:
    """Write synthetic DICOM studies and their ground truth (ground_truth.json, mask.npy.gz); ``--size 512
    --depth 256 --kind ct`` writes a thin-slice chest CT (0.68 mm pixels, 1.25 mm slices)."""
    if kind != "all" and kind not in KINDS:
        fail(f"unknown kind {kind!r}: expected cxr, ct, pet or all")
    if transfer_syntax is not None and transfer_syntax not in TRANSFER_SYNTAXES:
        fail(f"unknown transfer syntax {transfer_syntax!r}: expected {', '.join(TRANSFER_SYNTAXES)}")
    if seed is not None and seed < 0:
        fail("seed must be >= 0")
    kinds = KINDS if kind == "all" else (kind,)
    try:
        folders = make_samples(out_dir, kinds, seed, transfer_syntax, size, depth)
    except OSError as exc:
        fail(f"cannot write samples to {out_dir}: {exc.strerror or exc}")
    for folder in folders:
        files = sorted(folder.glob("*.dcm"))
        out(f"{folder}: {len(files)} instance(s) + ground_truth.json")


def register(root: typer.Typer) -> None:
    """Add the ``samples`` command group to the main CLI (design notes, "Command line")."""
    root.add_typer(app, name="samples")
