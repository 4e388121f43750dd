"""Container health checks (compose ``healthcheck``): ``python -m dicom_agent.tasks.health worker|db|http URL``.

- ``worker``: this host's Celery worker answers a ping through the broker (it is consuming);
- ``db``: the database answers and is migrated (the exporter's check: it has no port);
- ``http URL``: an HTTP endpoint answers below 500 (web, Flower).
Exit 0 healthy, 1 not, with one line on stderr.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request


def check_worker() -> str:
    from dicom_agent.config import get_settings
    from dicom_agent.tasks.app import configure

    app = configure(get_settings())
    host = socket.gethostname()
    replies = app.control.ping(timeout=5.0) or []
    mine = [name for reply in replies for name in reply if name.endswith(f"@{host}")]
    if not mine:
        raise RuntimeError(f"no worker on {host} answered the ping")
    return ", ".join(mine)


def check_db() -> str:
    from sqlalchemy import text

    from dicom_agent.db.session import get_engine

    with get_engine().connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if not version:
        raise RuntimeError("database not migrated")
    return f"schema {version}"


def check_http(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        if exc.code < 500:
            return f"HTTP {exc.code}"
        raise


def main(argv: list[str]) -> int:
    what = argv[0] if argv else ""
    try:
        if what == "worker":
            detail = check_worker()
        elif what == "db":
            detail = check_db()
        elif what == "http" and len(argv) == 2:
            detail = check_http(argv[1])
        else:
            sys.stderr.write("usage: python -m dicom_agent.tasks.health worker|db|http URL\n")
            return 2
    except Exception as exc:
        sys.stderr.write(f"unhealthy: {exc}\n")
        return 1
    sys.stdout.write(f"healthy: {detail}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
