"""Blue-green on real hosts behind real nginx (Debian's package, one per host, started by
the runbook's first switch): the new release goes into the idle slot, is checked there,
and traffic is switched with a graceful reload; `rollback RUN_ID` switches back to the old
slot, which never stopped. Clients polling through nginx the whole time see no failed
request; a release that fails in its slot never takes traffic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runbook_exec.testing.lab import SshLab, sample_release, stop_apps, write_proxy
from runbook_exec.testing.services import Traffic

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(
    shutil.which("nginx", path="/usr/sbin:/usr/bin") is None,
    reason="Debian's nginx package is not installed (scripts/setup --with-delivery)",
)


@dataclass
class Site:
    base: Path
    hosts: SshLab

    def __call__(self, command: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
        extra: list[str | Path] = ["--db", f"sqlite:///{self.base / 'state.db'}"]
        if command in ("run", "rollback"):
            extra += ["--known-hosts", self.hosts.known_hosts]
        if command == "run":
            extra += ["-i", self.base / "inventory"]
        return subprocess.run(
            [str(BIN / "runbook-exec"), command, *map(str, args), *map(str, extra)],
            capture_output=True,
            text=True,
            cwd=self.base,
            timeout=180,
            env={**os.environ, "COLUMNS": "200", "XDG_STATE_HOME": str(self.base / ".state")},
        )

    def deploy(self, version: str, **release: bool) -> dict[str, object]:
        artifact = sample_release(self.base / "artifacts", version, **release)
        done = self(
            "run", "runbooks/blue-green.yml", "-e", f"version={version}", "-e",
            f"artifact={artifact}", "--json", "--no-input",
        )  # fmt: skip
        assert done.returncode in (0, 1), done.stdout + done.stderr
        return dict(json.loads(done.stdout))

    def served(self) -> set[str]:
        """What each host's proxy answers now."""
        answers = set()
        for host in self.hosts.hosts:
            with urllib.request.urlopen(host.proxy_url, timeout=5) as answer:
                answers.add(answer.read().decode().strip())
        return answers


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("bluegreen")
    with SshLab() as hosts:
        hosts.start(2, groups={"web": ["host1", "host2"]})
        write_proxy(hosts)
        shutil.copytree(REPO / "runbooks", base / "runbooks")
        inventory = base / "inventory"
        inventory.mkdir()
        shutil.copy(hosts.inventory, inventory / "hosts.ini")
        shutil.copytree(REPO / "inventory" / "group_vars", inventory / "group_vars")
        site = Site(base, hosts)
        try:
            first = site.deploy("1.0")  # nothing live yet: blue; the proxy starts
            assert first["status"] == "succeeded", first
            yield site
        finally:
            stop_apps(hosts)


def test_switch_and_switch_back_under_traffic_lose_no_request(site: Site) -> None:
    assert site.served() == {"1.0"}
    urls = [h.proxy_url for h in site.hosts.hosts]
    with Traffic(urls, every=0.005) as traffic:
        switched = site.deploy("2.0")
        assert switched["status"] == "succeeded", switched
        assert site.served() == {"2.0"}
        # The old slot still runs: switching back needs no start.
        back = site("rollback", str(switched["run_id"]), "--json", "--no-input")
        assert back.returncode == 0, back.stdout + back.stderr
        assert site.served() == {"1.0"}
    counts = {url: (traffic.total(url), traffic.failed(url)) for url in urls}
    print(f"requests through nginx during switch and switch back (total, failed): {counts}")
    assert all(total > 100 for total, _ in counts.values()), counts
    assert all(failed == 0 for _, failed in counts.values()), traffic.counts


def test_a_release_that_fails_in_its_slot_never_takes_traffic(site: Site) -> None:
    urls = [h.proxy_url for h in site.hosts.hosts]
    with Traffic(urls, every=0.005) as traffic:
        outcome = site.deploy("3.0-broken", healthy=False)
    assert outcome["status"] == "rolled_back", outcome
    assert outcome["hosts"] == {"host1": "rolled_back", "host2": "not_reached"}
    assert site.served() == {"1.0"}
    assert all(traffic.failed(url) == 0 for url in urls), traffic.counts
    shown = json.loads(site("show", str(outcome["run_id"]), "--json").stdout)
    assert not shown["release_switches"]  # it never switched: nothing to switch back
    failed = [s for s in shown["host_steps"] if s["status"] == "failed"]
    assert [s["step_name"] for s in failed] == ["Health of the idle slot"]


def test_the_live_release_is_not_deployed_again(site: Site) -> None:
    outcome = site.deploy("1.0")
    assert outcome["status"] == "rolled_back"
    shown = json.loads(site("show", str(outcome["run_id"]), "--json").stdout)
    (failed,) = [s for s in shown["host_steps"] if s["status"] == "failed"]
    assert "1.0 is live already" in failed["message"]
    assert site.served() == {"1.0"}


def test_switching_back_to_a_slot_a_later_deploy_took_starts_its_release_there_again(
    site: Site,
) -> None:
    """4.0 goes green (1.0 stays on blue); a broken 9.1 then takes blue and fails there,
    so 4.0 stays live; undoing 4.0's run must serve 1.0, not the broken release that now
    runs in 1.0's slot."""
    urls = [h.proxy_url for h in site.hosts.hosts]
    with Traffic(urls, every=0.005) as traffic:
        four = site.deploy("4.0")
        assert four["status"] == "succeeded", four
        broken = site.deploy("9.1-broken", healthy=False)
        assert broken["status"] == "rolled_back", broken
        assert site.served() == {"4.0"}
        back = site("rollback", str(four["run_id"]), "--json", "--no-input")
        assert back.returncode == 0, back.stdout + back.stderr
        assert site.served() == {"1.0"}
    assert all(traffic.failed(url) == 0 for url in urls), traffic.counts
    shown = json.loads(site("show", json.loads(back.stdout)["run_id"], "--json").stdout)
    started = [s for s in shown["host_steps"] if s["step_name"] == "Start it there again"]
    assert {s["host"] for s in started if s["status"] == "ok"} == {"host1"}  # its slot taken
