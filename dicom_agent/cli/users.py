"""``users add | list | passwd | disable``: web accounts (roles ``radiologist`` and ``admin``).

Passwords are typed at a prompt or read from stdin (``--password-stdin``), never given as an argument (it would
land in shell history and ``ps``). There is no default password.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dicom_agent.cli.common import fail, out

app = typer.Typer(help="Web accounts for the worklist.", no_args_is_help=True)
ROLES = ("radiologist", "admin")
MIN_PASSWORD = 8


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        fail(f"password too short (at least {MIN_PASSWORD} characters)")
    return password


@app.command()
def add(
    username: str,
    role: Annotated[str, typer.Option(help="radiologist or admin")] = "radiologist",
    full_name: Annotated[str, typer.Option(help="shown as Verifying Observer Name in signed reports")] = "",
    organization: Annotated[str, typer.Option(help="Verifying Organization in signed reports")] = "",
    password_stdin: Annotated[bool, typer.Option(help="read the password from the first line of stdin")] = False,
) -> None:
    """Create a user."""
    from sqlalchemy import select

    from dicom_agent.db.orm import User
    from dicom_agent.db.session import session_scope
    from dicom_agent.web.security import hash_password

    if role not in ROLES:
        fail(f"role must be one of {', '.join(ROLES)}")
    if not username or len(username) > 64 or not username.isprintable() or " " in username:
        fail("username must be 1-64 printable characters without spaces")
    password = _read_password(password_stdin)
    with session_scope() as db:
        if db.scalar(select(User).where(User.username == username)) is not None:
            fail(f"user {username!r} already exists")
        db.add(
            User(
                username=username,
                password_hash=hash_password(password),
                full_name=full_name,
                organization=organization,
                role=role,
            )
        )
    out(f"user {username} ({role}) created")


@app.command("passwd")
def set_password(
    username: str,
    password_stdin: Annotated[bool, typer.Option(help="read the password from the first line of stdin")] = False,
) -> None:
    """Set a user's password."""
    from sqlalchemy import select

    from dicom_agent.db.orm import User
    from dicom_agent.db.session import session_scope
    from dicom_agent.web.security import hash_password

    password = _read_password(password_stdin)
    with session_scope() as db:
        user = db.scalar(select(User).where(User.username == username))
        if user is None:
            fail(f"no user {username!r}")
        user.password_hash = hash_password(password)
    out(f"password of {username} changed")


@app.command()
def disable(username: str) -> None:
    """Disable a user (their sessions stop working at the next request)."""
    from sqlalchemy import select

    from dicom_agent.db.orm import User
    from dicom_agent.db.session import session_scope

    with session_scope() as db:
        user = db.scalar(select(User).where(User.username == username))
        if user is None:
            fail(f"no user {username!r}")
        user.active = False
    out(f"user {username} disabled")


@app.command("list")
def list_users() -> None:
    """List users and roles."""
    from sqlalchemy import select

    from dicom_agent.db.orm import User
    from dicom_agent.db.session import session_scope

    with session_scope() as db:
        for user in db.scalars(select(User).order_by(User.username)):
            state = "" if user.active else "  (disabled)"
            out(f"{user.username:20} {user.role:12} {user.full_name} / {user.organization}{state}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="users")
