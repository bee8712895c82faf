"""What the site's Ansible configuration says, read by Ansible's own configuration code:
ansible.cfg (ANSIBLE_CONFIG, ./ansible.cfg, ~/.ansible.cfg, /etc/ansible/ansible.cfg, the
first found, as Ansible looks) and the ANSIBLE_* variables. SSH steps then connect as
playbook steps would: an inventory variable (`ansible_user`, `ansible_port`,
`ansible_ssh_private_key_file`, `ansible_become`, `ansible_become_user`) wins, then this,
then ~/.ssh/config, then defaults. With no `-i`, the inventory Ansible is configured with is
used (`inventory =`, ANSIBLE_INVENTORY; /etc/ansible/hosts if it exists).

Importing Ansible's configuration code costs ~0.13 s, so the answer is kept on disk under a
key made of Ansible's version, the working directory, every ANSIBLE_* variable and the
content of every file Ansible could read it from: any change to any of them misses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .inventory import Host

_CANDIDATES = ("./ansible.cfg", "~/.ansible.cfg", "/etc/ansible/ansible.cfg")


@dataclass(frozen=True)
class AnsibleDefaults:
    remote_user: str | None = None
    private_key_file: str | None = None
    remote_port: int | None = None
    become: bool = False
    become_user: str = "root"
    become_method: str = "sudo"
    become_password_file: str | None = None
    inventory: tuple[str, ...] = field(default_factory=tuple)  # set, or /etc/ansible/hosts
    config_file: str | None = None

    def becomes(self, host: Host) -> bool:
        """Whether commands on `host` run as another user: the inventory's ansible_become
        if it says, else this configuration (as Ansible decides)."""
        return host.become if "ansible_become" in host.vars else self.become


@functools.lru_cache(maxsize=1)
def ansible_defaults() -> AnsibleDefaults:
    """The site's Ansible settings that decide how a host is reached (cached)."""
    from .inventory import default_cache_dir

    entry = default_cache_dir() / "ansible-config" / f"{_fingerprint()}.json"
    try:
        data = json.loads(entry.read_text())
        return AnsibleDefaults(**{**data, "inventory": tuple(data["inventory"])})
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = _read()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        temporary = entry.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(found)))
        temporary.replace(entry)
    except OSError:
        pass  # a read-only home must not stop a run
    return found


def _read() -> AnsibleDefaults:
    import ansible.constants as C

    def value(name: str) -> tuple[Any, str]:
        found, origin = C.config.get_config_value_and_origin(name)
        return found, str(origin)

    hosts, origin = value("DEFAULT_HOST_LIST")
    inventory = [str(h) for h in hosts or ()]
    if origin == "default":
        inventory = [h for h in inventory if Path(h).exists()]
    port = value("DEFAULT_REMOTE_PORT")[0]
    key = value("DEFAULT_PRIVATE_KEY_FILE")[0]
    return AnsibleDefaults(
        remote_user=value("DEFAULT_REMOTE_USER")[0] or None,
        private_key_file=os.path.expanduser(str(key)) if key else None,
        remote_port=int(port) if port else None,
        become=bool(value("DEFAULT_BECOME")[0]),
        become_user=str(value("DEFAULT_BECOME_USER")[0] or "root"),
        become_method=str(value("DEFAULT_BECOME_METHOD")[0] or "sudo"),
        become_password_file=value("BECOME_PASSWORD_FILE")[0] or None,
        inventory=tuple(inventory),
        config_file=C.CONFIG_FILE,
    )


def become_password_from_file(path: str) -> str:
    """The password in Ansible's `become_password_file`: the file's first line, or, when
    the file is executable, what it prints (as Ansible reads it). Unreadable: bad input."""
    import subprocess

    from .errors import InputError, Problem

    file = Path(path).expanduser()
    try:
        if os.access(file, os.X_OK) and file.is_file():
            text = subprocess.run(
                [str(file)], capture_output=True, text=True, check=True, timeout=60
            ).stdout
        else:
            text = file.read_text().strip()
    except (OSError, subprocess.SubprocessError) as exc:
        why = f"cannot read it: {getattr(exc, 'strerror', None) or exc}"
        raise InputError(Problem(why, str(file), field="become_password_file")) from None
    return text.strip("\r\n")


def _fingerprint() -> str:
    from .inventory import ansible_version

    digest = hashlib.sha256()
    settings = sorted((k, v) for k, v in os.environ.items() if k.startswith("ANSIBLE_"))
    digest.update(json.dumps([ansible_version(), settings, os.getcwd()]).encode())
    for raw in (os.environ.get("ANSIBLE_CONFIG", ""), *_CANDIDATES):
        path = Path(raw).expanduser() if raw else None
        try:
            body = path.read_bytes() if path is not None and path.is_file() else b"-"
        except OSError:
            body = b"?"
        digest.update(raw.encode() + b"\0" + body + b"\0")
    return digest.hexdigest()
