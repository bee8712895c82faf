"""The shipped runbooks on real hosts: deploy, gray release with rollback, rollback, rolling
restart, and the release switch with its record (`releases`, `--check`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import apps, query
from runbook_exec.record.values import SwitchRecord, previous_of
from runbook_exec.testing.lab import SshLab, sample_release

REPO = Path(__file__).resolve().parent.parent
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def site(tmp_path: Path, hosts: SshLab) -> Iterator[Path]:
    """A project folder like a user's: the shipped runbooks, and an inventory for the lab's
    hosts in group `web` with the shipped group_vars."""
    shutil.copytree(REPO / "runbooks", tmp_path / "runbooks")
    shutil.copytree(REPO / "playbooks", tmp_path / "playbooks")
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    text = hosts.inventory.read_text().replace("[app]", "[web]")
    (inventory / "hosts.ini").write_text(text)
    shutil.copytree(REPO / "inventory" / "group_vars", inventory / "group_vars")
    hosts.inventory = inventory  # the runbook_exec fixture passes this as -i
    LABS[tmp_path] = hosts
    yield tmp_path
    LABS.pop(tmp_path, None)


LABS: dict[Path, SshLab] = {}  # each site's hosts, to explain a deploy that failed


def serving(hosts: SshLab, name: str) -> str:
    """What the sample app on a host answers (its version), or '' if it does not answer."""
    url = f"http://127.0.0.1:{hosts.host(name).app_port}/"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode().strip())
    except OSError:
        return ""


def live(hosts: SshLab, name: str) -> str:
    link = hosts.host(name).root / "app" / "current"
    return str(link.readlink()).removeprefix("releases/") if link.is_symlink() else ""


def releases_of(hosts: SshLab, name: str) -> set[str]:
    folder = hosts.host(name).root / "app" / "releases"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def deployed(runbook_exec: Run, site: Path, version: str, **kwargs: Any) -> None:
    """A deploy that must succeed; when it does not, the assertion shows why (and how the
    hosts' apps stand)."""
    done = deploy(runbook_exec, site, version, **kwargs)
    hosts = LABS.get(site)
    assert done.returncode == 0, done.stdout + done.stderr + (apps(hosts) if hosts else "")


def deploy(
    runbook_exec: Run,
    site: Path,
    version: str,
    *,
    healthy: bool = True,
    runbook: str = "deploy",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    artifact = sample_release(site / "artifacts", version, healthy=healthy)
    return runbook_exec(
        "run",
        f"runbooks/{runbook}.yml",
        "-e",
        f"version={version}",
        "-e",
        f"artifact={artifact}",
        *extra,
    )


HOSTS = ("host1", "host2", "host3", "host4")


def switch(before: str | None, after: str, source: str = "activate") -> SwitchRecord:
    return SwitchRecord("host1", "/srv/app", before, after, source, "run", 0.0, 0)


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([], None),
        ([switch(None, "1")], None),
        ([switch(None, "1"), switch("1", "2")], "1"),
        # 1 -> 2 -> 3, then back to 2: previous is 1 (what 2 replaced), not 3
        (
            [switch(None, "1"), switch("1", "2"), switch("2", "3"), switch("3", "2", "previous")],
            "1",
        ),
        # back again, to 1, which was deployed first: nothing earlier on record
        ([switch(None, "1"), switch("1", "2"), switch("2", "1", "previous")], None),
        # a host set up by hand and switched back from the disk: the disk must tell again
        ([switch("b", "a", "disk")], None),
        # a named switch (switch.yml -e version=1) is a deploy of that release
        ([switch(None, "1"), switch("1", "2"), switch("2", "1")], "2"),
    ],
)
def test_previous_walks_back_through_deploys(
    history: list[SwitchRecord], expected: str | None
) -> None:
    assert previous_of(history) == expected


def test_deploy_switches_every_host_and_the_app_answers_the_new_version(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    deployed(runbook_exec, site, "1.0.0")
    done = deploy(runbook_exec, site, "1.1.0")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in HOSTS:
        assert live(hosts, name) == "1.1.0"
        assert serving(hosts, name) == "1.1.0"
        conf = hosts.host(name).root / "app" / "current" / "app.conf"  # from the playbook
        assert (
            f"version = 1.1.0\nlisten = 127.0.0.1:{hosts.host(name).app_port}" in conf.read_text()
        )
    record = json.loads(runbook_exec("releases", "--json").stdout)["releases"]
    assert {(r["host"], r["live"], r["previous"]) for r in record} == {
        (name, "1.1.0", "1.0.0") for name in HOSTS
    }
    # Which bytes went live is in the record, with each switch: the artifact's SHA-256.
    artifact = hashlib.sha256((site / "artifacts" / "app-1.1.0.tar.gz").read_bytes())
    run_id = json.loads(runbook_exec("runs", "--json").stdout)["runs"][0]["run_id"]
    shown = json.loads(runbook_exec("show", run_id, "--json").stdout)
    assert {(w["host"], w["to"], w["artifact_sha256"]) for w in shown["release_switches"]} == {
        (name, "1.1.0", artifact.hexdigest()) for name in HOSTS
    }


def test_a_bad_release_fails_its_canary_is_rolled_back_and_goes_nowhere_else(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    deployed(runbook_exec, site, "1.0.0")
    done = deploy(
        runbook_exec,
        site,
        "2.0.0",
        healthy=False,
        runbook="gray-release",
        extra=("-e", "bake_time=0s", "--json"),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "rolled_back"
    assert outcome["hosts"] == {
        "host1": "rolled_back",
        "host2": "not_reached",
        "host3": "not_reached",
        "host4": "not_reached",
    }
    assert live(hosts, "host1") == "1.0.0" and serving(hosts, "host1") == "1.0.0"
    for name in ("host2", "host3", "host4"):
        assert "2.0.0" not in releases_of(hosts, name)
        assert live(hosts, name) == "1.0.0" and serving(hosts, name) == "1.0.0"


def test_switching_back_is_not_a_deploy_so_previous_keeps_going_back(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    for version in ("1.0.0", "1.1.0"):
        deployed(runbook_exec, site, version)
    bad = deploy(
        runbook_exec,
        site,
        "2.0.0",
        healthy=False,
        runbook="gray-release",
        extra=("-e", "bake_time=0s"),
    )
    assert bad.returncode == 1
    record = {
        r["host"]: r for r in json.loads(runbook_exec("releases", "--json").stdout)["releases"]
    }
    # The canary went 1.1.0 -> 2.0.0 -> back to 1.1.0: its previous is 1.0.0, not 2.0.0.
    assert (record["host1"]["live"], record["host1"]["previous"]) == ("1.1.0", "1.0.0")
    assert runbook_exec("run", "runbooks/switch.yml").returncode == 0
    assert all(live(hosts, n) == "1.0.0" and serving(hosts, n) == "1.0.0" for n in HOSTS)


def test_gray_release_waits_for_approval_between_batches(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    deployed(runbook_exec, site, "1.0.0")
    done = deploy(
        runbook_exec,
        site,
        "1.1.0",
        runbook="gray-release",
        extra=("-e", "bake_time=100ms", "--no-input"),
    )
    assert done.returncode == 3, done.stdout + done.stderr
    run_id = json.loads(runbook_exec("runs", "--json").stdout)["runs"][0]["run_id"]
    assert live(hosts, "host1") == "1.1.0" and live(hosts, "host2") == "1.0.0"
    for _ in range(2):  # batches of 1, 1 and 2 hosts: two gates
        assert runbook_exec("approve", run_id).returncode == 0
        resumed = runbook_exec("resume", run_id, "--no-input")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert all(serving(hosts, name) == "1.1.0" for name in HOSTS)


def test_rollback_restores_the_previous_release_everywhere(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    for version in ("1.0.0", "1.1.0"):
        deployed(runbook_exec, site, version)
    done = runbook_exec("run", "runbooks/switch.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(live(hosts, n) == "1.0.0" and serving(hosts, n) == "1.0.0" for n in HOSTS)
    named = runbook_exec("run", "runbooks/switch.yml", "-e", "version=1.1.0")
    assert named.returncode == 0
    assert all(serving(hosts, n) == "1.1.0" for n in HOSTS)


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE releases SET from_version = '0.0.1-evil' WHERE host = 'host2'",
        "UPDATE releases SET to_version = '0.0.1-evil' WHERE host = 'host3'",
        "DELETE FROM releases WHERE host = 'host1' AND to_version = '1.1.0'",
    ],
    ids=["from_version", "to_version", "deleted row"],
)
def test_a_release_row_edited_by_hand_is_flagged_and_previous_refuses(
    runbook_exec: Run, site: Path, hosts: SshLab, edit: str
) -> None:
    for version in ("1.0.0", "1.1.0"):
        deployed(runbook_exec, site, version)
    query(str(runbook_exec.db), edit)  # type: ignore[attr-defined]
    shown = runbook_exec("releases")
    assert shown.returncode == 0, shown.stderr
    assert "record altered" in shown.stdout
    assert "0.0.1-evil" not in shown.stdout.split("record altered")[0]  # the events' values
    back = runbook_exec("run", "runbooks/switch.yml", "--no-input")
    assert back.returncode == 4, back.stdout + back.stderr
    assert "activate: previous" in back.stderr and "nothing was done" in back.stderr
    assert all(live(hosts, n) == "1.1.0" for n in HOSTS)  # no host touched


def test_rolling_restart_never_has_two_batches_down_at_once(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    deployed(runbook_exec, site, "1.0.0")
    done = runbook_exec("run", "runbooks/restart.yml", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    steps = json.loads(runbook_exec("show", run_id, "--json").stdout)["host_steps"]
    down: dict[int, tuple[str, str]] = {}  # RFC 3339 UTC times compare as they sort
    for step in steps:
        start, end = down.get(step["batch"], ("9999", "0000"))
        if step["step_name"] == "Restart":
            start = min(start, step["started_at"])
        if step["step_name"] == "Health":
            end = max(end, step["finished_at"])
        down[step["batch"]] = (start, end)
    assert sorted(down) == [1, 2]
    assert down[1][1] <= down[2][0]  # batch 1 healthy before batch 2 went down
    assert all(serving(hosts, n) == "1.0.0" for n in HOSTS)


def test_pruning_never_removes_the_live_or_the_previous_release(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    for version in ("1", "2", "3", "4"):
        assert deploy(runbook_exec, site, version, extra=("-e", "keep=2")).returncode == 0
    assert releases_of(hosts, "host1") == {"3", "4"}
    assert runbook_exec("run", "runbooks/switch.yml").returncode == 0  # back to 3
    assert deploy(runbook_exec, site, "5", extra=("-e", "keep=1")).returncode == 0
    # keep=1, but neither the new live release (5) nor the one it replaced (3) may go
    assert releases_of(hosts, "host1") == {"3", "5"}


def test_releases_check_finds_a_link_changed_by_hand(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    for version in ("1.0.0", "1.1.0"):
        deployed(runbook_exec, site, version)
    clean = runbook_exec(
        "releases", "-i", hosts.inventory, "--check", "--known-hosts", hosts.known_hosts
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    link = hosts.host("host3").root / "app" / "current"
    link.unlink()
    link.symlink_to("releases/1.0.0")
    drifted = runbook_exec(
        "releases", "-i", hosts.inventory, "--check", "--json", "--known-hosts", hosts.known_hosts
    )
    assert drifted.returncode == 1
    rows = {r["host"]: r for r in json.loads(drifted.stdout)["releases"]}
    assert rows["host3"]["drift"] and rows["host3"]["found"] == "1.0.0"
    assert not rows["host1"]["drift"]
    # Each check is recorded (the web view's hosts page shows the last one's drift).
    from runbook_exec.store import Store

    checks = Store.open(runbook_exec.db).events_of(["releases.checked"])  # type: ignore[attr-defined]
    last = json.loads(checks[-1]["body"])
    assert len(checks) == 2 and last["drift"] == ["host3"]
    assert {(r["host"], r["found"]) for r in last["rows"] if r["drift"]} == {("host3", "1.0.0")}


def test_previous_falls_back_to_the_disk_for_a_host_deployed_by_hand(
    runbook_exec: Run, site: Path, hosts: SshLab, write: Callable[[str, str], Path]
) -> None:
    for name in HOSTS:
        app = hosts.host(name).root / "app"
        for version in ("a", "b"):
            (app / "releases" / version).mkdir(parents=True)
        (app / "current").symlink_to("releases/b")
        for path in (app, app / "releases", app / "releases" / "a", app / "releases" / "b"):
            shutil.chown(path, user=hosts.user)  # made by hand, but as the login user
    old = time.time() - 3600
    for name in HOSTS:
        os.utime(hosts.host(name).root / "app" / "releases" / "a", (old, old))
    path = write(
        "runbooks/back.yml",
        "name: back\ntargets: web\nsteps:\n"
        "  - release: {root: '{{ app_root }}', activate: previous}\n",
    )
    done = runbook_exec("run", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(live(hosts, n) == "a" for n in HOSTS)
    shown = runbook_exec(
        "show", json.loads(runbook_exec("runs", "--json").stdout)["runs"][0]["run_id"]
    )
    assert "chose from what is on disk" in shown.stdout


def test_activating_a_release_that_is_not_there_fails_clearly(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    deployed(runbook_exec, site, "1.0.0")
    done = runbook_exec("run", "runbooks/switch.yml", "-e", "version=9.9.9")
    assert done.returncode == 1
    assert "release 9.9.9 not found in" in done.stdout
    assert live(hosts, "host1") == "1.0.0"


def test_a_release_name_is_one_path_component(runbook_exec: Run, site: Path, hosts: SshLab) -> None:
    deployed(runbook_exec, site, "1.0.0")
    # Through the shipped runbook's parameter: its pattern refuses "..".
    done = runbook_exec("run", "runbooks/switch.yml", "-e", "version=..")
    assert done.returncode == 2 and "version" in done.stderr
    # Written in a runbook, or rendered into one: refused before anything connects.
    for activate, shown in (("../../../../etc", "'../../../../etc'"), ("'{{ where }}'", "'..'")):
        (site / "runbooks" / "escape.yml").write_text(
            "name: escape\ntargets: web\nparams:\n  where: {default: '..'}\nsteps:\n"
            f'  - release: {{root: "{{{{ app_root }}}}", activate: {activate}}}\n'
        )
        done = runbook_exec("run", "runbooks/escape.yml")
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"release name {shown} is not one path component" in done.stderr
    assert all(live(hosts, n) == "1.0.0" for n in HOSTS)
    assert json.loads(runbook_exec("runs", "--json").stdout)["runs"][0]["status"] == "succeeded"


def test_activating_the_live_release_changes_nothing_and_keeps_previous(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    for version in ("1.0.0", "2.0.0"):
        deployed(runbook_exec, site, version)
    again = deploy(runbook_exec, site, "2.0.0")
    assert again.returncode == 0, again.stdout + again.stderr
    record = {
        r["host"]: r for r in json.loads(runbook_exec("releases", "--json").stdout)["releases"]
    }
    assert {(r["live"], r["previous"]) for r in record.values()} == {("2.0.0", "1.0.0")}
    run_id = json.loads(runbook_exec("runs", "--json").stdout)["runs"][0]["run_id"]
    shown = json.loads(runbook_exec("show", run_id, "--json").stdout)
    activate = [s for s in shown["host_steps"] if s["step_name"] == "Activate"]
    assert all("2.0.0 is already live" in s["stdout"] for s in activate)
    assert runbook_exec("run", "runbooks/switch.yml").returncode == 0
    assert all(live(hosts, n) == "1.0.0" for n in HOSTS)


def test_rollback_of_a_deploy_that_reached_one_host_changes_that_host_only(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    for version in ("1.0.0", "2.0.0"):
        deployed(runbook_exec, site, version)
    deployed(runbook_exec, site, "3.0.0", extra=("--limit", "host1"))
    dry = runbook_exec("rollback", "--dry-run")
    assert "3.0.0 → 2.0.0" in dry.stdout and "host2:" not in dry.stdout, dry.stdout
    done = runbook_exec("rollback", "-m", "3.0.0 is slow")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [live(hosts, n) for n in HOSTS] == ["2.0.0"] * len(HOSTS)
    assert [serving(hosts, n) for n in HOSTS] == ["2.0.0"] * len(HOSTS)  # restarted, healthy
    record = {
        r["host"]: r for r in json.loads(runbook_exec("releases", "--json").stdout)["releases"]
    }
    assert {(r["live"], r["previous"]) for r in record.values()} == {("2.0.0", "1.0.0")}


def test_rollback_yml_undoes_the_last_deploy_on_exactly_the_hosts_it_switched(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    for version in ("1.0.0", "2.0.0"):
        deployed(runbook_exec, site, version)
    deployed(runbook_exec, site, "3.0.0", extra=("--limit", "host1"))
    deploy_3 = json.loads(runbook_exec("runs", "--json").stdout)["runs"][0]["run_id"]
    planned = runbook_exec("plan", "runbooks/rollback.yml", "-i", hosts.inventory)
    assert "what was live before the last run that deployed a release" in planned.stdout
    done = runbook_exec("run", "runbooks/rollback.yml", "-m", "3.0.0 is slow", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [live(hosts, n) for n in HOSTS] == ["2.0.0"] * len(HOSTS)  # not 1.0.0 anywhere
    assert serving(hosts, "host1") == "2.0.0"
    steps = json.loads(runbook_exec("show", json.loads(done.stdout)["run_id"], "--json").stdout)
    untouched = {(s["host"], s["step_name"], s["status"]) for s in steps["host_steps"]}
    assert {s for s in untouched if s[0] != "host1"} == {
        (h, step, "skipped") for h in HOSTS[1:] for step in ("Switch back", "Restart", "Health")
    }
    # Twice is harmless: the last deploy is still 3.0.0's, already undone; 3.0.0 stays gone.
    again = runbook_exec("run", "runbooks/rollback.yml")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [live(hosts, n) for n in HOSTS] == ["2.0.0"] * len(HOSTS)
    # A host another run has switched since is refused by name, unless forced.
    runbook_exec("run", "runbooks/switch.yml", "-e", "version=1.0.0", "--limit", "host1")
    refused = runbook_exec("run", "runbooks/rollback.yml", "-e", f"undo={deploy_3}")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "was switched to 1.0.0 by run" in refused.stdout and "force: true" in refused.stdout
    assert live(hosts, "host1") == "1.0.0"
    forced = runbook_exec(
        "run", "runbooks/rollback.yml", "-e", f"undo={deploy_3}", "-e", "force=true"
    )
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert [live(hosts, n) for n in HOSTS] == ["2.0.0"] * len(HOSTS)


def test_a_half_extracted_release_is_never_activated(
    runbook_exec: Run, site: Path, hosts: SshLab
) -> None:
    deployed(runbook_exec, site, "1.0.0")
    good = sample_release(site / "artifacts", "2.0.0")
    whole = good.read_bytes()
    cut = site / "cut" / good.name
    cut.parent.mkdir()
    cut.write_bytes(whole[: len(whole) - 60])  # VERSION is in it; app.py is cut short
    broken = runbook_exec(
        "run", "runbooks/deploy.yml", "-e", "version=2.0.0", "-e", f"artifact={cut}"
    )
    assert broken.returncode == 1 and "Unpack" in broken.stdout, broken.stdout
    assert not (hosts.host("host1").root / "app" / "releases" / "2.0.0").exists()
    assert [live(hosts, n) for n in HOSTS] == ["1.0.0"] * len(HOSTS)
    # The re-run with the whole artifact unpacks again instead of trusting what is there.
    deployed(runbook_exec, site, "2.0.0")
    assert [serving(hosts, n) for n in HOSTS] == ["2.0.0"] * len(HOSTS)
    run_id = json.loads(runbook_exec("runs", "--json").stdout)["runs"][0]["run_id"]
    steps = json.loads(runbook_exec("show", run_id, "--json").stdout)["host_steps"]
    digest = hashlib.sha256(good.read_bytes()).hexdigest()  # the artifact deployed
    uploads = [s["stdout"] for s in steps if s["step_name"] == "Upload"]
    assert len(uploads) == len(HOSTS)
    assert all(f"sha256 {digest}, checked on the host" in out for out in uploads)
