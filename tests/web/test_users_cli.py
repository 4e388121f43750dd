"""``dicom-agent users``: accounts created from the command line can sign in; passwords never as arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_agent.db.orm import User
from tests.web.factories import login

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_agent", "users", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ.copy(),
        timeout=120,
    )


@pytest.mark.slow  # five CLI processes, each importing the package (~15 s here)
def test_users_add_list_passwd_disable(client: TestClient, db: Session) -> None:
    r = cli(
        "add",
        "wang",
        "--role",
        "radiologist",
        "--full-name",
        "Wang^Li",
        "--organization",
        "City Hospital",
        "--password-stdin",
        stdin="s3cret-passphrase\n",
    )
    assert r.returncode == 0, r.stderr
    user = db.scalar(select(User).where(User.username == "wang"))
    assert user is not None and user.role == "radiologist" and user.organization == "City Hospital"
    assert user.password_hash.startswith("$argon2id$") and "s3cret" not in user.password_hash
    login(client, "wang", "s3cret-passphrase")

    dup = cli("add", "wang", "--password-stdin", stdin="another-pass\n")
    assert dup.returncode != 0 and "already exists" in dup.stderr
    short = cli("add", "zhao", "--password-stdin", stdin="short\n")
    assert short.returncode != 0 and "too short" in short.stderr
    role = cli("add", "zhao", "--role", "root", "--password-stdin", stdin="long-enough-pw\n")
    assert role.returncode != 0 and "role" in role.stderr

    listed = cli("list")
    assert "wang" in listed.stdout and "radiologist" in listed.stdout

    assert cli("passwd", "wang", "--password-stdin", stdin="new-passphrase-1\n").returncode == 0
    client.cookies.clear()
    login(client, "wang", "new-passphrase-1")

    assert cli("disable", "wang").returncode == 0
    assert client.get("/", follow_redirects=False).status_code == 303
