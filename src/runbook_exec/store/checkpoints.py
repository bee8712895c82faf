"""Signed checkpoints: the chain's head (event count and last hash) as a small JSON document
to keep outside the database, so that cutting events off the end, or rewriting the chain,
shows.

A checkpoint is signed with Ed25519 when a signing key is given (the auditor keeps the
private key off the machines that run; verifying needs only the public key), else with
HMAC-SHA256 under the audit key, else not at all. What is signed is the canonical JSON of
`{"at", "count", "hash"}`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, Problem
from .audit import Finding, canonical, utc_now

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )


def make(
    count: int, head: str, key: bytes | None, signing_key: Ed25519PrivateKey | None = None
) -> dict[str, Any]:
    """A signed statement of the chain's head."""
    made = {"count": count, "hash": head, "at": utc_now()}
    payload = canonical(made).encode("utf-8")
    if signing_key is not None:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        public = signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {
            **made,
            "signed": "ed25519",
            "signature": signing_key.sign(payload).hex(),
            "public_key": public.hex(),
        }
    if key:
        return {**made, "signed": "hmac-sha256", "signature": _hmac(key, payload)}
    return {**made, "signed": "none", "signature": None}


def check(
    point: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    key: bytes | None,
    public_key: Ed25519PublicKey | None = None,
) -> Finding | None:
    """Whether the checkpoint is authentic and the chain still holds its head at its place."""
    try:
        made = {"count": int(point["count"]), "hash": str(point["hash"]), "at": point["at"]}
    except (KeyError, TypeError, ValueError):
        return Finding(None, "the checkpoint is not one runbook-exec made (count, hash, at)")
    problem = _signature_problem(point, canonical(made).encode("utf-8"), key, public_key)
    if problem:
        return Finding(None, problem)
    count = made["count"]
    if len(rows) < count:
        return Finding(
            len(rows) + 1,
            f"the chain has {len(rows)} events but the checkpoint "
            f"saw {count}: events were cut off the end",
        )
    if count and rows[count - 1]["hash"] != made["hash"]:
        return Finding(count, "the chain no longer holds the checkpoint's head (rewritten)")
    return None


def _signature_problem(
    point: Mapping[str, Any],
    payload: bytes,
    key: bytes | None,
    public_key: Ed25519PublicKey | None,
) -> str | None:
    signed = point.get("signed")
    signature = str(point.get("signature") or "")
    if signed == "ed25519":
        if public_key is None:
            return "the checkpoint is signed with Ed25519: give the signer's --public-key"
        from cryptography.exceptions import InvalidSignature

        try:
            public_key.verify(bytes.fromhex(signature), payload)
        except (InvalidSignature, ValueError):
            return "the checkpoint's Ed25519 signature does not verify with that public key"
        return None
    if public_key is not None:
        return f"a public key was given but the checkpoint is signed with {signed!r}, not Ed25519"
    if key is not None and not hmac.compare_digest(signature, _hmac(key, payload)):
        return "the checkpoint's signature does not match the audit key"
    return None


def _hmac(key: bytes, payload: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8, `openssl genpkey -algorithm ed25519`) or
    OpenSSH (`ssh-keygen -t ed25519`) file, without a passphrase."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        load_pem_private_key,
        load_ssh_private_key,
    )

    data = _read(path, "--sign-key")
    loader = load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data else load_pem_private_key
    try:
        loaded = loader(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(Problem(f"not a usable private key: {exc}", str(path))) from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise InputError(Problem("not an Ed25519 private key", str(path)))
    return loaded


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file or an OpenSSH `ssh-ed25519 …` line."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import (
        load_pem_public_key,
        load_ssh_public_key,
    )

    data = _read(path, "--public-key")
    loader = load_ssh_public_key if data.startswith(b"ssh-") else load_pem_public_key
    try:
        loaded = loader(data)
    except (ValueError, TypeError) as exc:
        raise InputError(Problem(f"not a usable public key: {exc}", str(path))) from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise InputError(Problem("not an Ed25519 public key", str(path)))
    return loaded


def _read(path: Path, option: str) -> bytes:
    try:
        if path.exists() and not path.is_file():
            raise InputError(Problem(f"{option}: not a regular file", str(path)))
        with path.open("rb") as file:
            return file.read(1024 * 1024)
    except OSError as exc:
        raise InputError(
            Problem(f"cannot read it: {exc.strerror}", str(path), field=option)
        ) from None
