"""Inventories and host patterns behave exactly as Ansible's own tools say they do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runbook_exec.errors import InventoryError
from runbook_exec.inventory import Inventory

BIN = Path(sys.executable).parent
INI = """\
[web]
web1 ansible_host=10.0.0.1
web2 ansible_host=10.0.0.2 ansible_port=2222
web3
web10

[db]
db1 ansible_user=postgres
db2

[dc1]
web1
web2
db1

[dc2]
web3
web10
db2

[prod:children]
web
db

[prod:vars]
env=production
app_port=80
"""
YAML = """\
all:
  children:
    cache:
      hosts:
        cache-a.example.com: {ansible_host: 10.0.1.1}
        cache-b.example.com:
      vars:
        app_port: 6379
    dc1:
      hosts:
        cache-a.example.com:
"""


@pytest.fixture(scope="module")
def inventory_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inventory")
    (root / "hosts.ini").write_text(INI)
    (root / "cache.yml").write_text(YAML)
    (root / "group_vars").mkdir()
    (root / "group_vars" / "all.yml").write_text("app_port: 1\nregion: eu\n")
    (root / "group_vars" / "web.yml").write_text("app_port: 8080\napp_root: /srv/web\n")
    (root / "host_vars").mkdir()
    (root / "host_vars" / "web3.yml").write_text("app_port: 9090\n")
    return root


def ansible_list_hosts(sources: list[Path], pattern: str, limit: str | None = None) -> list[str]:
    command = [str(BIN / "ansible"), pattern, "--list-hosts"]
    for source in sources:
        command += ["-i", str(source)]
    if limit:
        command += ["--limit", limit]
    env = {**os.environ, "ANSIBLE_HOST_PATTERN_MISMATCH": "ignore", "ANSIBLE_NOCOLOR": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    return [line.strip() for line in done.stdout.splitlines()[1:] if line.strip()]


PATTERNS = [
    ("web", None),
    ("web:db", None),
    ("web:&dc1", None),
    ("web:!web3", None),
    ("prod:&dc2:!db2", None),
    ("web*", None),
    ("*.example.com", None),
    ("~web[12]$", None),
    ("web[1:2]", None),
    ("all", None),
    ("dc1", None),
    ("all", "dc2"),
    ("web", "web1:web10"),
    ("cache:web", "dc1"),
]


@pytest.mark.parametrize(("pattern", "limit"), PATTERNS)
def test_patterns_select_what_ansible_selects(
    inventory_dir: Path, pattern: str, limit: str | None
) -> None:
    ours = [h.name for h in Inventory.load([inventory_dir]).select(pattern, limit)]
    assert ours == ansible_list_hosts([inventory_dir], pattern, limit)


def test_several_sources_combine_as_with_repeated_dash_i(inventory_dir: Path) -> None:
    sources = [inventory_dir / "hosts.ini", inventory_dir / "cache.yml"]
    ours = [h.name for h in Inventory.load(sources).select("dc1")]
    assert ours == ansible_list_hosts(sources, "dc1")


@pytest.mark.parametrize("name", ["web1", "web2", "web3", "db1", "cache-a.example.com"])
def test_variables_merge_as_ansible_inventory_merges_them(inventory_dir: Path, name: str) -> None:
    host = next(h for h in Inventory.load([inventory_dir]).select("all") if h.name == name)
    done = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(inventory_dir), "--host", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    theirs = json.loads(done.stdout)
    for key, value in theirs.items():
        assert host.vars.get(key) == value, key


def test_connection_settings_come_from_inventory_variables(inventory_dir: Path) -> None:
    hosts = {h.name: h for h in Inventory.load([inventory_dir]).select("all")}
    assert (hosts["web2"].address, hosts["web2"].port) == ("10.0.0.2", 2222)
    assert (hosts["web3"].address, hosts["web3"].port) == ("web3", None)
    assert hosts["db1"].user == "postgres"
    assert hosts["web3"].template_vars()["group_names"] == ["dc2", "prod", "web"]


def test_missing_inventory_is_named(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"nope\.ini: inventory not found"):
        Inventory.load([tmp_path / "nope.ini"])


def test_unparsable_ini_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ini"
    bad.write_text("[web]\nweb1 ansible_host=1.2.3.4\nweb2 oops\n")
    with pytest.raises(InventoryError) as caught:
        Inventory.load([bad])
    assert str(caught.value) == (
        f"{bad}:3: cannot parse as an inventory: "
        "Expected key=value host variable assignment, got: oops"
    )


def test_pattern_that_matches_nothing_is_an_error(inventory_dir: Path) -> None:
    with pytest.raises(InventoryError, match="'web:&dc9' matches no hosts"):
        Inventory.load([inventory_dir]).select("web:&dc9")
    with pytest.raises(InventoryError, match="limited to 'db1' matches no hosts"):
        Inventory.load([inventory_dir]).select("web", "db1")


def test_every_spelling_of_an_inventory_gets_the_group_vars_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-i inventory.yml` from its own folder, `./inventory.yml`, `x/../inventory.yml` and the
    absolute path: the same hosts and variables as `ansible-inventory`, whichever spelling
    came first into the cache."""
    from runbook_exec.inventory import select_hosts

    (tmp_path / "inventory.yml").write_text("all:\n  children:\n    web:\n      hosts: {w1: {}}\n")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "web.yml").write_text("app_root: /srv/app\n")
    (tmp_path / "x").mkdir()
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    for spelling in (
        "inventory.yml",
        "./inventory.yml",
        "x/../inventory.yml",
        tmp_path / "inventory.yml",
    ):
        (host,) = select_hosts([spelling], "web", cache_dir=cache)
        assert host.vars.get("app_root") == "/srv/app", spelling
    done = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", "inventory.yml", "--host", "w1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(done.stdout)["app_root"] == "/srv/app"
