"""Helpers shared by the command modules: one clear line on stderr and a non-zero exit on failure."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"dicom-agent: {message}", err=True)
    raise typer.Exit(code)


def out(text: str) -> None:
    """Command output goes to stdout (the package itself never prints)."""
    sys.stdout.write(text + "\n")
