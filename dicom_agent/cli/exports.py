"""``exports``: the outbox table, and replay of failed or dead deliveries."""

from __future__ import annotations

from typing import Annotated

import typer

from dicom_agent.cli.common import fail, out

app = typer.Typer(help="Deliveries of results to destinations (the export outbox).", no_args_is_help=False)


@app.callback(invoke_without_command=True)
def exports(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    state: Annotated[str | None, typer.Option(help="pending, sending, done or dead")] = None,
) -> None:
    """List export rows: id, object kind, destination, state, attempts, next try, last error."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_agent.config import get_settings
    from dicom_agent.db.session import session_scope
    from dicom_agent.export.outbox import export_table

    with session_scope(get_settings().database_url) as s:
        rows = export_table(s, limit, state)
    header = ("id", "kind", "destination", "state", "tries", "next try (UTC)", "last error")
    widths = (6, 9, 32, 8, 5, 19, 60)
    out("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        cells = [str(c) if c is not None else "" for c in row]
        cells[5] = cells[5][:19]
        out("  ".join(c[:w].ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())


@app.command()
def retry(
    export_ids: Annotated[list[int] | None, typer.Argument(help="export ids to send again")] = None,
    dead: Annotated[bool, typer.Option("--dead", help="replay every dead export")] = False,
) -> None:
    """Put exports back in the queue (due now, with a fresh attempt budget)."""
    if not export_ids and not dead:
        fail("give export ids or --dead")
    from dicom_agent.config import get_settings
    from dicom_agent.db.session import session_scope
    from dicom_agent.export.outbox import replay

    with session_scope(get_settings().database_url) as s:
        replayed = replay(s, export_ids or [], dead=dead)
    missing = sorted(set(export_ids or []) - set(replayed))
    out(f"replayed {len(replayed)} export(s)")
    if missing and not dead:
        fail(f"not replayed (unknown or being sent): {', '.join(map(str, missing))}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="exports")


@app.command("encode-sample")
def encode_sample(
    sample: Annotated[str, typer.Argument(help="a sample folder with ground_truth.json (dicom-agent samples make)")],
    out_dir: Annotated[str | None, typer.Option("--out", help="write the objects here")] = None,
    profile: Annotated[str, typer.Option(help="full, sr-only, key-images or key-images+gsps")] = "full",
    to: Annotated[list[str] | None, typer.Option("--to", help="C-STORE them to AET@host:port (repeatable)")] = None,
) -> None:
    """Encode a sample's GROUND TRUTH (not a model) as SR/SEG/KOS and optionally send it: a demo of the outputs."""
    from pathlib import Path

    from dicom_agent.config import get_settings
    from dicom_agent.encode import encode_study
    from dicom_agent.encode.ground_truth import load_sample
    from dicom_agent.errors import DicomAgentError
    from dicom_agent.export.scu import Peer, send_files

    folder = Path(sample)
    if not (folder / "ground_truth.json").is_file():
        fail(f"{folder} has no ground_truth.json")
    try:
        findings, sources = load_sample(folder)
        objects = encode_study(findings, sources, profile=profile)
    except (DicomAgentError, ValueError, KeyError, OSError) as exc:
        fail(f"cannot encode {folder}: {exc}")
    target = Path(out_dir) if out_dir else folder.parent / f"{folder.name}-results"
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, obj in enumerate(objects, start=1):
        path = target / f"{number:02d}-{obj.kind}.dcm"
        path.write_bytes(obj.to_bytes())
        paths.append(path)
        out(f"{obj.kind:5s} {obj.sop_instance_uid}  {path}")
    settings = get_settings()
    for text in to or []:
        try:
            results = send_files(paths, Peer.parse(text), settings.ae_title, settings.dimse_timeout_s)
        except (DicomAgentError, ValueError, OSError) as exc:
            fail(f"{text}: {exc}")
        bad = [r for r in results if not r.ok]
        out(f"sent {len(results) - len(bad)}/{len(results)} to {text}")
        if bad:
            fail(f"{text}: " + "; ".join(f"{r.path.name}: {r.error or hex(r.status or 0)}" for r in bad))
