"""``db upgrade``: Alembic migrations."""

from __future__ import annotations

import typer

from dicom_agent.cli.common import out

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command()
def upgrade(revision: str = "head") -> None:
    """Apply the Alembic migrations (also run on start of ``serve``)."""
    from dicom_agent.config import get_settings
    from dicom_agent.db.migrate import upgrade as run_upgrade

    url = get_settings().database_url
    run_upgrade(url, revision)
    out(f"database at {revision}")
