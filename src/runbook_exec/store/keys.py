"""Audit keys: where they are looked for, how they are named, how a new one is made.

A store's chain is keyed (HMAC-SHA256) from its first event on, which records the key's id:
a fingerprint that names the key without revealing it. Keys are looked up by id among
RUNBOOK_EXEC_AUDIT_KEY, the file named by RUNBOOK_EXEC_AUDIT_KEY_FILE, and the 0600 files
`<id>.key` in the user's key folder (`~/.config/runbook-exec/audit-keys`). A rotation is an
event naming the next key's id; the events before it keep verifying with the old key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EXIT_AUDIT, InputError, Problem, RunbookExecError

_ID_LABEL = b"runbook-exec audit key id"


class AuditKeyError(RunbookExecError):
    """The audit key this store needs is missing, or a different one was given. Nothing
    was done."""

    exit_code = EXIT_AUDIT


def key_id(key: bytes) -> str:
    """A key's public name: 16 hex digits of HMAC(key, a fixed label)."""
    return hmac.new(key, _ID_LABEL, hashlib.sha256).hexdigest()[:16]


def key_folder(environ: Mapping[str, str] | None = None) -> Path:
    env = environ if environ is not None else os.environ
    base = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "runbook-exec" / "audit-keys"


@dataclass
class KeyRing:
    """The audit keys this process can use, by id. `given` is the key named by the
    environment, if any: the one a new store is keyed with, and the one an old store that
    recorded no key id was keyed with."""

    folder: Path
    given: bytes | None = None
    keys: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> KeyRing:
        env = environ if environ is not None else os.environ
        ring = cls(key_folder(env), _given_key(env))
        if ring.given:
            ring.keys[key_id(ring.given)] = ring.given
        return ring

    def get(self, wanted: str) -> bytes | None:
        """The key with this id: given, or a file `<id>.key` in the key folder."""
        if wanted in self.keys:
            return self.keys[wanted]
        path = self.folder / f"{wanted}.key"
        try:
            if not path.is_file():
                return None
            with path.open("rb") as file:
                key = file.read(4096).strip()
        except OSError:
            return None
        if key and key_id(key) == wanted:
            self.keys[wanted] = key
            return key
        return None

    def where(self) -> str:
        """Where keys are looked for, for messages."""
        return (
            "RUNBOOK_EXEC_AUDIT_KEY, the file named by RUNBOOK_EXEC_AUDIT_KEY_FILE, or "
            f"{self.folder}/ID.key"
        )

    def newest_in_folder(self) -> bytes | None:
        """The most recently made key of the folder, for a new store when none is given."""
        try:
            files = sorted(
                (p for p in self.folder.glob("*.key") if p.is_file()),
                key=lambda p: p.stat().st_mtime,
            )
        except OSError:
            return None
        for path in reversed(files):
            found = self.get(path.stem)
            if found:
                return found
        return None

    def make_key(self) -> bytes:
        """A new random key, saved as `<id>.key` (0600) in a private key folder."""
        key = secrets.token_hex(32).encode("ascii")
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = self.folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise AuditKeyError(f"{self.folder} is not a folder of yours: no key written there")
        if stat.S_IMODE(info.st_mode) & 0o077:
            self.folder.chmod(0o700)
        path = self.folder / f"{key_id(key)}.key"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key + b"\n")
        self.keys[key_id(key)] = key
        return key


def _given_key(env: Mapping[str, str]) -> bytes | None:
    if env.get("RUNBOOK_EXEC_AUDIT_KEY"):
        return env["RUNBOOK_EXEC_AUDIT_KEY"].encode("utf-8")
    if env.get("RUNBOOK_EXEC_AUDIT_KEY_FILE"):
        path = Path(env["RUNBOOK_EXEC_AUDIT_KEY_FILE"])
        if path.exists() and not path.is_file():
            raise InputError(Problem("the audit key is not a regular file", str(path)))
        try:
            with path.open("rb") as file:
                key = file.read(4096).strip()
        except OSError as exc:
            raise InputError(
                Problem(f"cannot read the audit key: {exc.strerror}", str(path))
            ) from None
        if not key:
            raise InputError(Problem("the audit key file is empty", str(path)))
        return key
    return None
