"""Who is signed in to the web view: passwords (scrypt, from the standard library), the
session cookie (signed, HttpOnly, SameSite=Strict, with an expiry), a CSRF token per
session for every form that changes anything, and a limit on failed sign-ins."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import deque
from pathlib import Path

ROLES = ("viewer", "operator", "admin")
SESSION_COOKIE = "rbx_session"
SESSION_SECONDS = 12 * 3600
SCRYPT = (2**14, 8, 1)  # n, r, p: ~16 MiB and ~50 ms a check
FAILURES_ALLOWED = 5  # failed sign-ins per user and address...
FAILURE_WINDOW = 300.0  # ...in this many seconds, then refused until they age out


def hash_password(password: str) -> str:
    n, r, p = SCRYPT
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        found = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(found.hex(), digest)


def server_secret(folder: Path) -> bytes:
    """The key sessions are signed with: made once, kept 0600 in `folder`."""
    path = folder / "web-secret"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret.hex() + "\n")
    return secret


class Sessions:
    """Signed session cookies: `user|since|expiry|nonce` and its HMAC, where `since` is
    when that user was made (a user removed and added again, or given a new password, is
    another: their old cookies stop working). Signing out revokes the cookie's nonce for
    the rest of its life. The nonce also keys the session's CSRF token."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.revoked: dict[str, float] = {}  # nonce -> when its cookie would expire

    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, user: str, since: float) -> str:
        expiry = int(time.time()) + SESSION_SECONDS
        body = json.dumps([user, since, expiry, secrets.token_hex(16)])
        packed = base64.urlsafe_b64encode(body.encode()).decode()
        return f"{packed}.{self._sign(packed)}"

    def read(self, cookie: str | None) -> tuple[str, float, str] | None:
        """The signed-in user, when that user was made, and the session's nonce; None when
        absent, forged, expired or signed out."""
        if not cookie or "." not in cookie:
            return None
        packed, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(self._sign(packed), signature):
            return None
        try:
            user, since, expiry, nonce = json.loads(base64.urlsafe_b64decode(packed))
            if not isinstance(user, str) or int(expiry) < time.time():
                return None
        except (ValueError, TypeError):
            return None
        if str(nonce) in self.revoked:
            return None
        return user, float(since), str(nonce)

    def revoke(self, nonce: str) -> None:
        now = time.time()
        self.revoked = {n: t for n, t in self.revoked.items() if t > now}
        self.revoked[nonce] = now + SESSION_SECONDS

    def csrf(self, nonce: str) -> str:
        return self._sign(f"csrf:{nonce}")

    def csrf_ok(self, nonce: str, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf(nonce), token)


class SignInLimit:
    """Failed sign-ins per (user, address): a sixth within five minutes is refused. The
    address is the connection's own (serve does not believe X-Forwarded-For)."""

    def __init__(self) -> None:
        self.failures: dict[tuple[str, str], deque[float]] = {}

    def blocked(self, user: str, address: str) -> bool:
        recent = self.failures.get((user, address))
        if recent is None:
            return False
        while recent and recent[0] < time.monotonic() - FAILURE_WINDOW:
            recent.popleft()
        if not recent:
            del self.failures[(user, address)]
        return len(recent) >= FAILURES_ALLOWED

    def failed(self, user: str, address: str) -> None:
        if len(self.failures) > 10_000:  # forget the oldest tries first, not the memory
            horizon = time.monotonic() - FAILURE_WINDOW
            self.failures = {k: v for k, v in self.failures.items() if v and v[-1] > horizon}
        self.failures.setdefault((user, address), deque()).append(time.monotonic())

    def succeeded(self, user: str, address: str) -> None:
        self.failures.pop((user, address), None)


# Checked against when a name is unknown, so that an unknown name takes as long as a
# known one with a wrong password (the answer's timing says nothing about who exists).
DECOY = hash_password(secrets.token_hex(16))
