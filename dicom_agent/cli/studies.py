"""``studies``: a table of studies with state, findings and exports."""

from __future__ import annotations

from typing import Annotated

import typer

from dicom_agent.cli.common import out


def studies(limit: Annotated[int, typer.Option(min=1)] = 50) -> None:
    """List the most recent studies with their state, findings count and exports."""
    from dicom_agent.db.queries import study_table

    rows = [[str(c) if c is not None else "" for c in row] for row in study_table(limit)]
    header = ("id", "study uid", "mod", "inst", "state", "rev", "findings", "exports", "error")
    # the UID column is never cut: it is what `dicom-agent ask` and the PACS are given (up to 64 characters)
    uid_width = max([len("study uid"), *(len(row[1]) for row in rows)])
    widths = (5, uid_width, 6, 5, 14, 4, 8, 12, 30)
    out("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for cells in rows:
        out("  ".join(c[:w].ljust(w) for c, w in zip(cells, widths, strict=True)))
