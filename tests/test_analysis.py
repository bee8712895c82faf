"""Releases judged by their metrics, against a real Prometheus (Debian's package) scraping
the lab hosts' sample apps while traffic flows: a bad canary is rolled back by the analysis
with no person involved, a good release is promoted batch by batch; an analysis between
batches; an inconclusive one asks a person; the batch against its baseline. Every
measurement is recorded and shown by `show`, the report and the web view. And the tally's
rules, on queries whose answers are known."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import apps
from runbook_exec.analysis import Verdict, analyse, mann_whitney
from runbook_exec.steps.analysis import AnalysisSpec
from runbook_exec.templating import evaluate
from runbook_exec.testing.lab import SshLab, sample_release, stop_apps
from runbook_exec.testing.services import PROMETHEUS, Prometheus, Traffic, free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(
    not Path(PROMETHEUS).exists() and os.geteuid() != 0,
    reason="Debian's prometheus package is not installed (scripts/setup installs it as root)",
)


@dataclass
class Site:
    base: Path
    hosts: SshLab
    prometheus: Prometheus
    traffic: Traffic

    def argv(self, command: str, *args: str | Path) -> list[str]:
        extra: list[str | Path] = ["--db", f"sqlite:///{self.base / 'state.db'}"]
        if command == "run":
            extra += ["--known-hosts", self.hosts.known_hosts, "-i", self.base / "inventory"]
        return [str(BIN / "runbook-exec"), command, *map(str, args), *map(str, extra)]

    def env(self, **more: str) -> dict[str, str]:
        return {**os.environ, "COLUMNS": "200", "XDG_STATE_HOME": str(self.base / ".state"), **more}

    def __call__(
        self, command: str, *args: str | Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, *args),
            capture_output=True,
            text=True,
            cwd=self.base,
            timeout=180,
            env=env or self.env(),
        )

    def live(self, host: str) -> str:
        link = self.hosts.host(host).root / "app" / "current"
        return str(link.readlink()).removeprefix("releases/") if link.is_symlink() else ""

    def release(self, version: str, **kwargs: Any) -> Path:
        return sample_release(self.base / "artifacts", version, **kwargs)

    def show(self, run_id: str) -> dict[str, Any]:
        done = self("show", run_id, "--json")
        assert done.returncode in (0, 4), done.stderr
        return dict(json.loads(done.stdout))


FAST = ("-e", "interval=1s", "-e", "count=3", "-e", "window=3s")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Four hosts in group `web` running release 1.0 (deployed by the shipped deploy
    runbook), a Prometheus scraping their apps every second, and traffic to each app."""
    base = tmp_path_factory.mktemp("analysis")
    with SshLab() as hosts:
        hosts.start(4, groups={"web": ["host1", "host2", "host3", "host4"]})
        shutil.copytree(REPO / "runbooks", base / "runbooks")
        shutil.copytree(REPO / "playbooks", base / "playbooks")
        inventory = base / "inventory"
        inventory.mkdir()
        shutil.copy(hosts.inventory, inventory / "hosts.ini")
        shutil.copytree(REPO / "inventory" / "group_vars", inventory / "group_vars")
        targets = {h.name: f"127.0.0.1:{h.app_port}" for h in hosts.hosts}
        urls = [f"http://127.0.0.1:{h.app_port}/" for h in hosts.hosts]
        with Prometheus(base / "prometheus", targets) as prometheus, Traffic(urls) as traffic:
            site = Site(base, hosts, prometheus, traffic)
            first = site.release("1.0")
            done = site(
                "run", "runbooks/deploy.yml", "-e", "version=1.0", "-e", f"artifact={first}"
            )
            assert done.returncode == 0, done.stdout + done.stderr + apps(hosts)
            prometheus.wait_for('app_requests_total{code="200"} > 0')
            try:
                yield site
            finally:
                stop_apps(hosts)


def canary(site: Site, version: str, *extra: str, **release: Any) -> dict[str, Any]:
    artifact = site.release(version, **release)
    done = site(
        "run", "runbooks/canary.yml", "-e", f"version={version}", "-e", f"artifact={artifact}",
        "-e", f"prometheus={site.prometheus.url}", *FAST, *extra, "--json", "--no-input",
    )  # fmt: skip
    assert done.returncode in (0, 1, 3), done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def test_a_bad_canary_is_rolled_back_by_its_error_rate_with_no_person_involved(
    site: Site,
) -> None:
    outcome = canary(site, "2.0-bad", error_rate=0.3)
    assert outcome["status"] == "rolled_back", outcome
    assert outcome["hosts"] == {
        "host1": "rolled_back", "host2": "not_reached", "host3": "not_reached",
        "host4": "not_reached",
    }  # fmt: skip
    assert {site.live(h) for h in ("host1", "host2", "host3", "host4")} == {"1.0"}
    shown = site.show(outcome["run_id"])
    assert not [g for g in shown["gates"] if g["kind"] == "approve"]  # nobody was asked
    (measured,) = shown["measurements"]  # the first failed measurement ends the analysis
    assert measured["verdict"] == "failed"
    assert 0.2 < measured["value"] < 0.4  # a third of the canary's requests fail
    assert 'instance=~"host1"' in measured["query"]  # the batch's hosts, as sent
    assert "[3s]" in measured["query"]
    (step,) = [s for s in shown["host_steps"] if s["step_name"] == "Error rate"]
    assert step["status"] == "failed"
    assert "1 failed measurement, more than the failure_limit of 0" in step["message"]
    text = site("show", outcome["run_id"]).stdout
    assert "analysis: batch 1 · Error rate" in text
    assert 'query│ sum(rate(app_requests_total{code=~"5..", instance=~"host1"}' in text


def test_a_good_release_is_promoted_batch_by_batch_on_its_measurements(site: Site) -> None:
    outcome = canary(site, "3.0")
    assert outcome["status"] == "succeeded", outcome
    assert {site.live(h) for h in ("host1", "host2", "host3", "host4")} == {"3.0"}
    measured = site.show(outcome["run_id"])["measurements"]
    assert [(m["batch"], m["number"], m["verdict"]) for m in measured] == [
        (batch, number, "successful") for batch in (1, 2, 3) for number in (1, 2, 3)
    ]
    assert all(m["value"] == 0 for m in measured)
    queries = {m["batch"]: m["query"] for m in measured}
    assert 'instance=~"host1"' in queries[1]
    assert 'instance=~"host2"' in queries[2]
    assert 'instance=~"host3|host4"' in queries[3]
    # The report shows every measurement; the plan shows the query with its batch to come.
    facts = json.loads(site("report", outcome["run_id"], "-f", "json").stdout)["facts"]
    assert [a["verdict"] for a in facts["analyses"]] == ["successful"] * 9
    markdown = site("report", outcome["run_id"], "-f", "md").stdout
    assert "## Analyses (metrics)" in markdown
    planned = site(
        "plan", "runbooks/canary.yml", "-i", site.base / "inventory", "-e", "version=4",
        "-e", f"artifact={site.release('4')}", "-e", "prometheus=http://prom:9090",
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    assert "<batch_hosts[*] at run time>" in planned.stdout


def between(site: Site, name: str, *, approve: bool = False) -> Path:
    """canary.yml with its analysis step moved between the batches (and, with `approve`,
    an approval after it)."""
    runbook = site.base / "runbooks" / f"{name}.yml"
    text = (site.base / "runbooks" / "canary.yml").read_text()
    gate = (
        "  between_batches:\n"
        "    - analysis:\n"
        '        prometheus: "{{ prometheus }}"\n'
        '        query: sum(rate(app_requests_total{code="500", '
        "instance=~\"{{ batch_hosts | join('|') }}\"}[3s])) or vector(0)\n"
        "        success: result < 0.5\n"
        "        initial_delay: 3s\n"
        "        count: 2\n"
        "        interval: 1s\n"
    ) + ("    - approve: Promote?\n" if approve else "")
    text = text.replace("  max_fail_percentage: 0\n", "  max_fail_percentage: 0\n" + gate)
    start = text.index("  - name: Error rate")
    runbook.write_text(text[:start] + text[text.index("rollback:") :])
    return runbook


def test_an_analysis_between_batches_fails_the_run_and_rolls_back_what_it_changed(
    site: Site,
) -> None:
    runbook = between(site, "between")
    artifact = site.release("5.0-bad", error_rate=0.5)
    done = site(
        "run", runbook, "-e", "version=5.0-bad", "-e", f"artifact={artifact}", "-e",
        f"prometheus={site.prometheus.url}", "--json", "--no-input",
    )  # fmt: skip
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "rolled_back", done.stdout + done.stderr
    assert outcome["hosts"]["host1"] == "rolled_back"
    assert outcome["hosts"]["host2"] == "not_reached"
    assert site.live("host1") != "5.0-bad"
    shown = site.show(outcome["run_id"])
    (gate_record,) = [g for g in shown["gates"] if g["kind"] == "analysis"]
    assert gate_record["status"] == "failed"
    assert gate_record["gate_key"] == "after:1:0"
    assert [m["verdict"] for m in shown["measurements"]] == ["failed"]
    assert shown["measurements"][0]["step"] == "between batches"


def test_a_passed_analysis_between_batches_is_not_measured_again_on_resume(
    site: Site,
) -> None:
    runbook = between(site, "between-approved", approve=True)
    artifact = site.release("5.1", error_rate=0.0)
    done = site(
        "run", runbook, "-e", "version=5.1", "-e", f"artifact={artifact}", "-e",
        f"prometheus={site.prometheus.url}", "--json", "--no-input",
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr  # after the analysis, a person
    run_id = json.loads(done.stdout)["run_id"]
    for _ in range(2):
        assert site("approve", run_id, "-m", "metrics fine").returncode == 0
        resumed = site("resume", run_id, "--no-input", "--json")
        assert resumed.returncode in (0, 3), resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, resumed.stdout
    shown = site.show(run_id)
    gates = [(g["gate_key"], g["kind"], g["status"]) for g in shown["gates"]]
    assert gates == [
        ("after:1:0", "analysis", "passed"), ("after:1:1", "approve", "approved"),
        ("after:2:0", "analysis", "passed"), ("after:2:1", "approve", "approved"),
    ]  # fmt: skip
    assert [m["batch"] for m in shown["measurements"]] == [1, 1, 2, 2]  # none twice
    assert {site.live(h) for h in ("host1", "host2", "host3", "host4")} == {"5.1"}


def test_an_inconclusive_analysis_asks_a_person_and_is_not_measured_again(
    site: Site,
) -> None:
    runbook = site.base / "runbooks" / "nodata.yml"
    runbook.write_text(
        "name: nodata\ntargets: web\nparams:\n  prometheus: {type: str}\n"
        "strategy:\n  batches: [2, '100%']\nsteps:\n"
        '  - name: Latency\n    analysis:\n      prometheus: "{{ prometheus }}"\n'
        "      query: app_latency_seconds{instance=~\"{{ batch_hosts | join('|') }}\"}\n"
        "      success: result < 0.5\n      count: 1\n"
    )
    done = site("run", runbook, "-e", f"prometheus={site.prometheus.url}", "--json", "--no-input")
    assert done.returncode == 3, done.stdout + done.stderr  # waiting for a person
    run_id = json.loads(done.stdout)["run_id"]
    shown = site.show(run_id)
    assert shown["status"] == "awaiting_approval"
    (measured,) = shown["measurements"]
    assert (measured["verdict"], measured["value"], measured["message"]) == (
        "inconclusive", None, "no data",
    )  # fmt: skip
    (gate,) = shown["gates"]
    assert gate["message"].startswith("Analysis inconclusive (1 inconclusive measurement")
    approved = site("approve", run_id, "-m", "no latency metric yet; error rate fine")
    assert approved.returncode == 0, approved.stderr
    resumed = site("resume", run_id, "--no-input")
    assert resumed.returncode == 3, resumed.stdout + resumed.stderr  # batch 2 asks too
    shown = site.show(run_id)
    batches = [m["batch"] for m in shown["measurements"]]
    assert batches == [1, 2]  # batch 1 was not measured again
    first = [s for s in shown["host_steps"] if s["batch"] == 1]
    assert {s["status"] for s in first} == {"ok"}
    assert all("approved by a person" in (s["stdout"] or "") for s in first)
    cancelled = site("cancel", run_id, "-m", "the latency metric comes next week")
    assert cancelled.returncode == 0, cancelled.stderr


def test_the_batch_against_its_baseline(site: Site) -> None:
    """The canary's per-host error rate over the analysis against the hosts not changed:
    significantly higher fails; the same passes."""
    runbook = site.base / "runbooks" / "baseline.yml"
    rate = (
        'sum by (instance) (rate(app_requests_total{{code="500", '
        "instance=~\"{{{{ {0} | join('|') }}}}\"}}[2s]))"
    )
    analysis = {
        "prometheus": "{{ prometheus }}",
        "query": rate.format("batch_hosts"),
        "success": "result >= 0",
        "initial_delay": "3s",  # the new app's first two scrapes
        "count": 4,
        "interval": "1s",
        "compare": {"baseline": rate.format("baseline_hosts"), "alpha": 0.05},
    }
    book = {
        "name": "baseline",
        "targets": "web",
        "params": {"prometheus": {"type": "str"}},
        "strategy": {"batches": [1, "100%"]},
        "steps": [{"name": "Against the rest", "analysis": analysis, "when": "batch_number == 1"}],
    }
    runbook.write_text(json.dumps(book))  # JSON is YAML
    for version, rate, expected in (("6.0-bad", 0.4, "failed"), ("6.1", 0.0, "successful")):
        artifact = site.release(version, error_rate=rate)
        done = site(
            "run", "runbooks/deploy.yml", "-e", f"version={version}", "-e",
            f"artifact={artifact}", "-l", "host1",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        done = site(
            "run", runbook, "-e", f"prometheus={site.prometheus.url}", "--json", "--no-input"
        )
        shown = site.show(json.loads(done.stdout)["run_id"])
        compared = [m for m in shown["measurements"] if m["number"] == 0]
        assert [m["verdict"] for m in compared] == [expected], json.dumps(shown)
        figures = compared[0]["baseline"]
        assert figures["canary_samples"] >= 3 and figures["baseline_samples"] >= 3
        if expected == "failed":
            assert figures["p"] < 0.05 and figures["canary_median"] > figures["baseline_median"]


def quick(site: Site, name: str, query: str, **fields: Any) -> Path:
    """A runbook of one analysis step on the web hosts, in one batch."""
    analysis = {"prometheus": "{{ prometheus }}", "query": query, "success": "result < 1"}
    book = {
        "name": name,
        "targets": "web",
        "params": {
            "prometheus": {"type": "str"},
            "token": {"type": "str", "secret": True, "env": "TOK"},
        },
        "steps": [{"name": "Judge", "analysis": {**analysis, **fields}}],
    }
    path = site.base / "runbooks" / f"{name}.yml"
    path.write_text(json.dumps(book))
    return path


def test_what_a_query_makes_of_a_secret_is_recorded_masked(site: Site) -> None:
    runbook = quick(site, "secret", "vector(0) # {{ token | upper }} {{ token }}", count=1)
    secret = "s3cr3tTokenXyz"
    done = site(
        "run", runbook, "-e", f"prometheus={site.prometheus.url}", "--json", "--no-input",
        env=site.env(TOK=secret),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    (measured,) = site.show(run_id)["measurements"]
    assert measured["query"] == "vector(0) # ******** ********"
    everything = site("show", run_id, "--json").stdout + site("report", run_id, "-f", "md").stdout
    assert secret not in everything and secret.upper() not in everything
    import sqlite3

    # Prometheus quotes a bad query in its error: what the template made of the secret is
    # masked there too (here it is the name of a function Prometheus does not know).
    runbook = quick(site, "echoed", "{{ token | upper }}(up)", count=1)
    done = site(
        "run", runbook, "-e", f"prometheus={site.prometheus.url}", "--json", "--no-input",
        env=site.env(TOK=secret),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    echoed = json.loads(done.stdout)["run_id"]
    (measured,) = site.show(echoed)["measurements"]
    assert measured["verdict"] == "error" and "unknown function" in measured["message"]
    assert "********" in measured["message"]
    everything += done.stdout + done.stderr + site("show", echoed, "--json").stdout
    assert secret.upper() not in everything
    with sqlite3.connect(site.base / "state.db") as connection:
        dump = "\n".join(connection.iterdump())
    assert dump and secret.upper() not in dump and secret not in dump


def test_a_stop_during_an_analysis_is_no_verdict_and_resume_measures_again(site: Site) -> None:
    import signal
    import time

    runbook = quick(site, "stopped", "vector(0)", count=8, interval="1s")
    process = subprocess.Popen(
        site.argv("run", runbook, "-e", f"prometheus={site.prometheus.url}", "--no-input"),
        cwd=site.base, env=site.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    run_id = ""
    while time.monotonic() < deadline:
        runs = json.loads(site("runs", "--json").stdout)["runs"]
        run_id = next((r["run_id"] for r in runs if r["runbook"] == "stopped"), "")
        if run_id and site.show(run_id)["measurements"]:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    shown = site.show(run_id)
    assert shown["status"] == "interrupted"
    assert {s["status"] for s in shown["host_steps"]} == {"running"}  # no verdict recorded
    assert {h["status"] for h in shown["hosts"]} != {"failed"}
    taken = len(shown["measurements"])
    resumed = site("resume", run_id, "--no-input", "--json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    shown = site.show(run_id)
    assert len(shown["measurements"]) == taken + 8  # measured again, whole
    attempts = [(m["attempt"], m["number"]) for m in shown["measurements"]]
    assert attempts == [(1, n) for n in range(1, taken + 1)] + [(2, n) for n in range(1, 9)]
    assert "analysis: batch 1 · Judge (measured again: attempt 2)" in site("show", run_id).stdout
    assert {s["status"] for s in shown["host_steps"]} == {"ok"}


def test_the_web_view_shows_the_measurements(site: Site) -> None:
    runs = json.loads(site("runs", "--json").stdout)["runs"]
    measured = [
        r["run_id"] for r in runs if r["runbook"] == "canary" and r["status"] == "succeeded"
    ]
    with_analysis = measured[0] if measured else canary(site, "7.0")["run_id"]
    password = "correct horse battery"
    added = subprocess.run(
        [str(BIN / "runbook-exec"), "users", "add", "vera", "--password-stdin", "--db",
         f"sqlite:///{site.base / 'state.db'}"],
        input=password + "\n", capture_output=True, text=True, cwd=site.base,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "runbook-exec"), "serve", "--bind", f"127.0.0.1:{port}", "--db",
         f"sqlite:///{site.base / 'state.db'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=site.base,
    )  # fmt: skip
    try:
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        url = f"http://127.0.0.1:{port}"
        _until_up(url)
        form = urllib.parse.urlencode({"user": "vera", "password": password, "next": "/"})
        opener.open(f"{url}/login", data=form.encode(), timeout=10).read()
        page = opener.open(f"{url}/runs/{with_analysis}", timeout=10).read().decode()
    finally:
        server.terminate()
        server.wait(10)
    assert "<h2>Analysis</h2>" in page
    assert "successful" in page and "instance=~&#34;host1&#34;" in page


def _until_up(url: str) -> None:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/login", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"serve did not answer at {url}")


# --- the tally, on queries whose answers are known ---------------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with Prometheus(tmp_path_factory.mktemp("prom"), {}) as server:
        yield server


def tally(url: str, query: str, **fields: Any) -> tuple[Verdict, list[str], str]:
    spec = AnalysisSpec.model_validate({"prometheus": url, "query": query, "interval": 0, **fields})
    seen: list[str] = []

    async def measured(m: Any) -> None:
        seen.append(str(m.verdict))

    async def sleep(seconds: float) -> bool:
        return True

    outcome = asyncio.run(
        analyse(spec, query, lambda e, v: evaluate(e, {"result": v}), measured, sleep)
    )
    return outcome.verdict, seen, outcome.message


@pytest.mark.parametrize(
    ("query", "fields", "verdict", "seen"),
    [
        ("vector(0.004)", {"success": "result < 0.01", "count": 3}, "successful",
         ["successful"] * 3),
        ("vector(0.2)", {"success": "result < 0.01", "count": 3}, "failed", ["failed"]),
        ("vector(0.2)", {"success": "result < 0.01", "count": 3, "failure_limit": 1}, "failed",
         ["failed", "failed"]),
        ("vector(0.2)", {"failure": "result > 0.5", "count": 2}, "successful", ["successful"] * 2),
        # Both conditions: a value that meets neither is inconclusive.
        ("vector(0.2)", {"success": "result < 0.1", "failure": "result > 0.5", "count": 2,
                         "inconclusive_limit": 1}, "inconclusive", ["inconclusive"] * 2),
        ("vector(1) == 2", {"success": "result < 1"}, "inconclusive", ["inconclusive"]),
        ("scalar(vector(3))", {"success": "result == 3"}, "successful", ["successful"] * 3),
        # Several series: `result` is their list.
        ("vector(1) or label_replace(vector(2), 'a', 'b', '', '')",
         {"success": "result | max < 3", "count": 1}, "successful", ["successful"]),
        # NaN (0/0: no traffic, or a dead app) never meets `<`.
        ("vector(0) / vector(0)", {"success": "result < 0.01", "count": 1}, "failed", ["failed"]),
        ("sum(", {"success": "result < 1", "count": 3, "error_limit": 1}, "error",
         ["error", "error"]),
        # Errors under the limit, and nothing else: no measurement passed, so neither does it.
        ("sum(", {"success": "result < 1", "count": 3}, "error", ["error"] * 3),
        # Several series where the condition wants one: an error, never a pass.
        ("vector(1) or label_replace(vector(2), 'a', 'b', '', '')",
         {"success": "result < 3", "count": 2}, "error", ["error"] * 2),
    ],
)  # fmt: skip
def test_the_tally_follows_argo_rollouts_rules(
    prometheus: Prometheus, query: str, fields: dict[str, Any], verdict: str, seen: list[str]
) -> None:
    got, measured, _ = tally(prometheus.url, query, **fields)
    assert (str(got), measured) == (verdict, seen)


def test_a_server_that_does_not_answer_is_an_error_not_a_pass() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    got, measured, message = tally(url, "vector(0)", success="result < 1", count=10)
    assert (got, measured) == (Verdict.ERROR, ["error"] * 5)
    assert "5 measurements in a row could not be taken, more than the error_limit of 4" in message
    got, measured, message = tally(url, "vector(0)", success="result < 1", count=3)
    assert (got, measured) == (Verdict.ERROR, ["error"] * 3)  # under the limit: still no pass
    assert "no measurement of 3 succeeded (3 errors)" in message


def test_a_server_that_answers_a_byte_a_second_is_bounded_by_the_timeout() -> None:
    """A socket timeout bounds each read, not the answer: the query's is for the whole."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        while not stop.is_set():
            try:
                server.settimeout(0.2)
                connection, _ = server.accept()
            except OSError:
                continue
            with connection:
                connection.recv(4096)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
                    if stop.wait(0.3):
                        return
                    connection.sendall(bytes([byte]))

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        got, measured, message = tally(
            url, "vector(0)", success="result < 1", count=1, timeout="1s"
        )
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert (got, measured) == (Verdict.ERROR, ["error"])
    assert "no measurement of 1 succeeded" in message


def test_mann_whitney_agrees_with_scipy() -> None:
    """p-values from scipy.stats.mannwhitneyu(x, y, alternative=..., method="asymptotic")."""
    x = [0.1, 0.4, 0.4, 0.9, 1.2, 1.3, 2.0, 2.2]
    y = [0.5, 1.1, 1.4, 1.5, 1.5, 2.1, 2.6, 2.8, 3.0]
    higher, lower = mann_whitney(x, y)
    assert higher == pytest.approx(0.975868, abs=1e-6)
    assert lower == pytest.approx(0.030143, abs=1e-6)
    assert mann_whitney([1.0] * 5, [1.0] * 5) == (1.0, 1.0)
