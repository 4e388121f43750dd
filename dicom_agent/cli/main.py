"""Entry point: assembles the command groups (design notes, "Command line")."""

from __future__ import annotations

import sys

import typer

from dicom_agent.cli import db, dimse, roles, studies

app = typer.Typer(
    name="dicom-agent",
    help="DICOM node that runs a unified multimodal imaging model and returns SR/SEG/KOS to the PACS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(db.app, name="db")
app.command()(dimse.send)
app.command()(dimse.echo)
app.command()(studies.studies)
roles.register(app)


def _register_optional() -> None:
    """Command groups owned by later parts of the data flow; each module adds itself to ``app``."""
    import importlib

    for name in ("samples", "model", "exports", "routes", "users", "ask"):
        try:
            module = importlib.import_module(f"dicom_agent.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"dicom_agent.cli.{name}":
                raise
            continue
        module.register(app)


_register_optional()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
