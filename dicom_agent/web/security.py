"""Passwords, signed session cookies, CSRF tokens and a login throttle.

Passwords: Argon2id (argon2-cffi defaults, RFC 9106). Sessions: an itsdangerous-signed cookie holding only the
user id, a CSRF token and the issue time — HttpOnly, SameSite=Lax, Secure in production. CSRF: the token is
bound to the session (synchronizer token pattern, OWASP CSRF cheat sheet) and every unsafe request must echo it.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from dicom_agent.config import Settings

SESSION_COOKIE = "da_session"
SESSION_MAX_AGE_S = 12 * 3600
_hasher = PasswordHasher()


class ConfigurationError(RuntimeError):
    """The web app cannot start safely with these settings (e.g. production without a secret key)."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches; a malformed stored hash counts as a mismatch."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def dummy_verify() -> None:
    """Spends the same time as a real check so that unknown usernames are not revealed by timing."""
    verify_password(_DUMMY_HASH, "not the password")


_DUMMY_HASH = _hasher.hash(secrets.token_hex(8))


def secret_key_for(settings: Settings) -> str:
    """The session signing key: ``SECRET_KEY`` (required in production), else one kept in the storage root.

    Keeping the generated key in a 0600 file makes embedded sessions survive a restart without configuration.
    """
    if settings.secret_key:
        return settings.secret_key
    if settings.production:
        raise ConfigurationError("DICOM_AGENT_SECRET_KEY must be set in production")
    path = Path(settings.storage_dir) / ".web_secret_key"
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key)
    return key


class SessionCodec:
    """Signs and checks the session cookie payload (a small dict)."""

    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret_key, salt="dicom-agent-session")

    def dumps(self, data: dict[str, Any]) -> str:
        return self._serializer.dumps(data)

    def loads(self, cookie: str | None) -> dict[str, Any] | None:
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        return data if isinstance(data, dict) else None


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class LoginThrottle:
    """At most ``limit`` failed sign-ins per key (client address + username) in ``window_s`` seconds."""

    def __init__(self, limit: int = 5, window_s: float = 300.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked(self, key: str) -> bool:
        with self._lock:
            return len(self._recent(key, time.monotonic())) >= self.limit

    def failed(self, key: str) -> None:
        with self._lock:
            self._recent(key, time.monotonic()).append(time.monotonic())

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
