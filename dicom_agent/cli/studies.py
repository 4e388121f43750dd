"""``studies``: a table of studies with state, findings and exports."""

from __future__ import annotations

from typing import Annotated

import typer

from dicom_agent.cli.common import out


def studies(limit: Annotated[int, typer.Option(min=1)] = 50) -> None:
    """List the most recent studies with their state, findings count and exports."""
    from dicom_agent.db.queries import study_table

    rows = study_table(limit)
    header = ("id", "study uid", "mod", "inst", "state", "rev", "findings", "exports", "error")
    widths = (5, 40, 6, 5, 14, 4, 8, 12, 30)
    out("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        cells = (str(c) if c is not None else "" for c in row)
        out("  ".join(c[:w].ljust(w) for c, w in zip(cells, widths, strict=True)))
