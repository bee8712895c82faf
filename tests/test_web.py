"""`runbook-exec serve` in a real browser (Debian's chromium through Playwright), over a
store of real runs on real hosts: an auditor signs in, filters by change id, opens the
failed run, finds the failing host-step's output, opens the change's handover report and
downloads an export that verifies; a tampered row shows its flag; bad requests get clear
pages and never a traceback; sign-in is limited and forms need their CSRF token."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import chromium_browser, query
from runbook_exec.testing.lab import SshLab
from runbook_exec.testing.services import free_port

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery"


@dataclass
class Served:
    url: str
    db: str
    base: Path
    failed: str  # the run of change CHG-B that failed on host2
    good: str
    lab: SshLab | None = None

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "runbook-exec"), *args, "--db", self.db],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.base,
            timeout=120,
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A store with three runs on two hosts (CHG-A ok; CHG-B failed on host2 with a telling
    stderr; one without a change), a viewer `dana`, and the web view on a free port."""
    from runbook_exec.web import create_app

    base = tmp_path_factory.mktemp("web")
    db = f"sqlite:///{base / 'state.db'}"
    with SshLab() as lab:
        lab.start(2, groups={"app": ["host1", "host2"]})
        runbook = base / "rb.yml"
        runbook.write_text(
            "name: web-demo\ntargets: app\nsteps:\n  - name: Greet\n    shell: echo hello from "
            "{{ inventory_hostname }}\n  - name: Check disk\n    shell: >-\n      "
            "if [ {{ inventory_hostname }} = host2 ]; then echo 'disk /data is 97% full' >&2; "
            "exit 3; fi\n"
        )
        ids = {}
        for change in ("CHG-A", "CHG-B", ""):
            extra = ["--change-id", change] if change else []
            if change == "CHG-A":
                extra += ["-l", "host1"]
            done = subprocess.run(
                [str(BIN / "runbook-exec"), "run", str(runbook), *lab.cli_args(), "--db", db,
                 "--json", "--operator", "erin", *extra],
                capture_output=True, text=True, cwd=base, timeout=120,
            )  # fmt: skip
            assert done.returncode in (0, 1), done.stdout + done.stderr
            ids[change] = json.loads(done.stdout)["run_id"]
        served = Served("", db, base, ids["CHG-B"], ids["CHG-A"], lab)
        added = served.cli("users", "add", "dana", "--password-stdin", stdin=PASSWORD + "\n")
        assert added.returncode == 0, added.stderr
        with serving(create_app(db, b"k" * 32)) as url:
            served.url = url
            yield served


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` under uvicorn in a thread, on a free port; its URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", proxy_headers=False
    )
    server = uvicorn.Server(config)  # as `serve` runs it: X-Forwarded-For not believed
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def signed_in(browser: Any, served: Served, name: str = "dana") -> Any:
    """A page of `browser` (or of a browser context) signed in as `name`."""
    page = browser.new_page()
    page.goto(served.url + "/runs")
    assert "/login" in page.url  # no session: to the sign-in page
    page.fill("input[name=user]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/runs")
    return page


def test_an_auditor_finds_the_failing_step_and_the_report_and_exports_proof(
    served: Served, tmp_path: Path
) -> None:
    with chromium_browser() as browser:
        page = signed_in(browser, served)
        assert page.locator("table.runs tbody tr").count() == 3
        if os.environ.get("RBX_DOCS_SCREENSHOTS"):
            page.set_viewport_size({"width": 1100, "height": 420})
            page.screenshot(path=str(Path(__file__).parent.parent / "docs" / "web-runs.png"))
        page.fill("input[name=change]", "CHG-B")
        page.click("form.filters button")
        page.wait_for_url("**change=CHG-B**")
        rows = page.locator("table.runs tbody tr")
        assert rows.count() == 1 and "failed" in rows.first.inner_text()
        page.click(f"text={served.failed}")
        page.wait_for_url(f"**/runs/{served.failed}")
        assert "erin" in page.locator("dl.facts").inner_text()
        failed_cell = page.locator("table.grid a.cell.s-failed")
        assert failed_cell.count() == 1
        failed_cell.click()
        page.wait_for_url("**/output?**")
        assert "Check disk on host2" in page.locator("h1").inner_text()
        page.click("nav.streams >> text=stderr")
        assert "disk /data is 97% full" in page.locator("table.output").inner_text()
        page.go_back()
        page.go_back()
        page.click("text=Handover report")
        assert page.locator("h1").inner_text() == "Handover report"
        assert "host2" in page.locator("table").first.inner_text()
        page.goto(served.url + "/audit")
        assert "Chain intact" in page.locator("p.ok").inner_text()
        with page.expect_download() as download:
            page.click("text=Whole trail, JSONL")
        trail = tmp_path / "trail.jsonl"
        download.value.save_as(str(trail))
    checked = served.cli("audit", "verify", "--file", str(trail))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "audit trail OK" in checked.stdout


def test_bad_requests_get_clear_pages_and_no_traceback(served: Served) -> None:
    with chromium_browser() as browser:
        page = signed_in(browser, served)
        for path, status, says in (
            ("/runs/20990101-000000-abcdef", 404, "no run '20990101-000000-abcdef'"),
            ("/runs?since=yesterday", 400, "since: 'yesterday' is not a date"),
            ("/runs?status=happy", 400, "'happy' is not a run status"),
            ("/runs?page=-1", 400, "'-1' is not a page number"),
            ("/changes/NOPE/report", 404, "no run of change 'NOPE'"),
            ("/nowhere", 404, "Not Found"),
        ):
            response = page.goto(served.url + path)
            assert response is not None and response.status == status, path
            text = page.locator("main").inner_text()
            assert says in text, (path, text)
            assert "Traceback" not in page.content()
        big = page.request.post(served.url + "/logout", data="x" * 100_000)
        assert big.status == 413
        no_token = page.request.post(served.url + "/logout", form={"csrf": "forged"})
        assert no_token.status == 403  # a state change needs the session's own token
        assert page.goto(served.url + "/runs") is not None and "/runs" in page.url


def test_sign_in_is_limited_and_a_removed_user_is_out(served: Served) -> None:
    served.cli("users", "add", "lee", "--role", "operator", "--password-stdin", stdin=PASSWORD)
    with chromium_browser() as browser:
        context = browser.new_context()
        for _ in range(5):
            wrong = context.request.post(
                served.url + "/login", form={"user": "lee", "password": "guess"}
            )
            assert wrong.status == 401
        limited = context.request.post(
            served.url + "/login", form={"user": "lee", "password": PASSWORD}
        )
        assert limited.status == 429  # even the right password, for a while
        served.cli("users", "add", "temp", "--password-stdin", stdin=PASSWORD + "\n")
        page = signed_in(context, served, "temp")
        cookie = next(c for c in context.cookies() if c["name"] == "rbx_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert served.cli("users", "remove", "temp").returncode == 0
        page.goto(served.url + "/runs")
        assert "/login" in page.url
    listed = served.cli("users", "list").stdout
    assert "dana  viewer" in listed and "lee  operator" in listed and "temp" not in listed
    events = served.cli("audit", "export").stdout
    assert '\\"type\\":\\"user.added\\"' in events and '\\"type\\":\\"user.removed\\"' in events


def test_a_tampered_row_shows_its_flag(served: Served) -> None:
    query(served.db, "UPDATE runs SET operator = 'mallory' WHERE id = :id", id=served.good)
    try:
        with chromium_browser() as browser:
            page = signed_in(browser, served)
            page.goto(f"{served.url}/runs/{served.good}")
            flags = page.locator("div.flags")
            assert flags.count() == 1
            assert "record altered" in flags.inner_text() and "mallory" in flags.inner_text()
            assert "erin" in page.locator("dl.facts").inner_text()  # what the events say
            if os.environ.get("RBX_DOCS_SCREENSHOTS"):
                page.screenshot(path=str(Path(__file__).parent.parent / "docs" / "web-run.png"))
    finally:
        query(served.db, "UPDATE runs SET operator = 'erin' WHERE id = :id", id=served.good)


def test_metrics_need_a_token_and_say_what_the_record_says(served: Served) -> None:
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def scrape(token: str | None) -> tuple[int, str]:
        request = urllib.request.Request(served.url + "/metrics")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""

    assert scrape(None)[0] == 401 and scrape("rbx_not-a-token")[0] == 401
    made = served.cli("tokens", "create", "prometheus")
    assert made.returncode == 0 and made.stdout.startswith("rbx_")
    token = made.stdout.strip()
    status, text = scrape(token)
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    runs = "runbook_exec_runs_total"
    assert samples[(runs, (("outcome", "failed"), ("runbook", "web-demo")))] == 2
    assert samples[(runs, (("outcome", "succeeded"), ("runbook", "web-demo")))] == 1
    failures = (
        "runbook_exec_host_step_failures_total",
        (("runbook", "web-demo"), ("step", "Check disk")),
    )
    assert samples[failures] == 2
    count = ("runbook_exec_run_duration_seconds_count", (("runbook", "web-demo"),))
    assert samples[count] == 3
    assert samples[("runbook_exec_audit_chain_intact", ())] == 1
    assert samples[("runbook_exec_runs_awaiting_approval", ())] == 0
    assert (
        samples[("runbook_exec_audit_events", ())]
        >= samples[("runbook_exec_audit_last_verified_seq", ())]
        > 0
    )
    assert "prometheus" in served.cli("tokens", "list").stdout
    assert token not in served.cli("tokens", "list").stdout
    assert served.cli("tokens", "revoke", "prometheus").returncode == 0
    assert scrape(token)[0] == 401


@pytest.fixture(scope="module")
def api_token(served: Served) -> str:
    made = served.cli("tokens", "create", "schemathesis")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_the_api_holds_to_its_openapi_document(served: Served, api_token: str) -> None:
    """Schemathesis against the API's own OpenAPI document: no server error, every status
    and body as documented, whatever the parameters (30 generated requests an operation)."""
    try:
        import schemathesis
        from hypothesis import HealthCheck, given, settings
    except ImportError:  # in the test extra; CI installs it
        if os.environ.get("CI"):
            pytest.fail("schemathesis is not installed")
        pytest.skip("schemathesis is not installed")
    headers = {"Authorization": f"Bearer {api_token}"}
    schema = schemathesis.openapi.from_url(served.url + "/api/v1/openapi.json", headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/api/v1/runs", "/api/v1/runs/{run_id}", "/api/v1/runs/{run_id}/host-steps",
        "/api/v1/runs/{run_id}/output", "/api/v1/releases", "/api/v1/audit",
    }  # fmt: skip
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def holds(case: Any) -> None:
            case.call_and_validate(headers=headers)

        holds()


def test_the_api_answers_what_the_pages_show(served: Served, api_token: str) -> None:
    import urllib.request

    def get(path: str) -> dict[str, Any]:
        request = urllib.request.Request(served.url + path)
        request.add_header("Authorization", f"Bearer {api_token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    listed = get("/api/v1/runs?change=CHG-B")
    assert listed["schema"] == 1 and [r["run_id"] for r in listed["runs"]] == [served.failed]
    run = get(f"/api/v1/runs/{served.failed}")
    assert run["status"] == "failed" and run["flags"] == []
    steps = get(f"/api/v1/runs/{served.failed}/host-steps")["host_steps"]
    failed = [s for s in steps if s["status"] == "failed"]
    assert [(s["host"], s["step_name"]) for s in failed] == [("host2", "Check disk")]
    output = get(f"/api/v1/runs/{served.failed}/output?host=host2&index=1&stream=stderr")
    assert output["lines"] == ["disk /data is 97% full"] and output["total"] == 1
    assert get("/api/v1/audit")["intact"] is True


def test_the_api_status_filter_lists_every_run_status() -> None:
    from typing import get_args

    from runbook_exec.web import STATUSES
    from runbook_exec.web.api import StatusFilter

    assert set(get_args(StatusFilter)) == {"", *STATUSES}


def test_an_operator_approves_a_waiting_gate_in_the_browser_and_the_run_goes_on(
    served: Served,
) -> None:
    """Four eyes: a viewer cannot decide, the run's starter cannot approve their own gate;
    another operator approves with a comment, and the run carries on to the end."""
    assert served.lab is not None
    gated = served.base / "gated.yml"
    gated.write_text(
        "name: gated\ntargets: app\nstrategy:\n  batches: [1]\n  between_batches:\n"
        "    - approve: Canary fine? Go on.\nsteps:\n  - name: Mark\n"
        "    shell: touch {{ lab_root }}/gated-{{ inventory_hostname }}\n"
    )
    started = subprocess.run(
        [str(BIN / "runbook-exec"), "run", str(gated), *served.lab.cli_args(), "--db",
         served.db, "--json", "--no-input", "--operator", "erin"],
        capture_output=True, text=True, cwd=served.base, timeout=120,
    )  # fmt: skip
    assert started.returncode == 3, started.stdout + started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    for name in ("erin", "olga"):
        added = served.cli(
            "users", "add", name, "--role", "operator", "--password-stdin", stdin=PASSWORD
        )
        assert added.returncode == 0, added.stderr
    with chromium_browser() as browser:
        viewer = signed_in(browser, served)
        viewer.goto(f"{served.url}/runs/{run_id}")
        assert "Canary fine? Go on." in viewer.locator("section.gate").inner_text()
        assert viewer.locator("form.decide").count() == 0  # a viewer is not offered it
        token = viewer.locator("header input[name=csrf]").get_attribute("value")
        forced = viewer.request.post(
            f"{served.url}/runs/{run_id}/decide",
            form={"csrf": token or "", "decision": "approve", "comment": "me too"},
        )
        assert forced.status == 403

        def as_user(name: str) -> Any:
            page = signed_in(browser.new_context(), served, name)
            page.goto(f"{served.url}/runs/{run_id}")
            return page

        starter = as_user("erin")
        starter.fill("form.decide textarea[name=comment]", "looks fine to me")
        starter.click("form.decide button[value=approve]")
        assert "erin started run" in starter.locator("main").inner_text()
        assert "four eyes" in starter.locator("main").inner_text()

        other = as_user("olga")
        other.fill("form.decide textarea[name=comment]", "canary error rate flat")
        other.click("form.decide button[value=approve]")
        other.wait_for_url(f"**/runs/{run_id}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            other.reload()
            if "succeeded" in other.locator("h1").inner_text():
                break
            time.sleep(0.5)
        assert "succeeded" in other.locator("h1").inner_text()
        gates = other.locator("table").filter(has_text="Canary fine? Go on.").inner_text()
        assert "approved" in gates and "olga" in gates and "canary error rate flat" in gates
    assert (served.lab.host("host2").root / "gated-host2").exists()  # the run went on
    shown = json.loads(served.cli("show", run_id, "--json").stdout)
    assert shown["status"] == "succeeded"
    assert [g["decided_by"] for g in shown["gates"] if g["status"] == "approved"] == ["olga"]


def test_a_300000_line_output_opens_a_page_at_a_time_and_is_searchable(served: Served) -> None:
    assert served.lab is not None
    runbook = served.base / "big.yml"
    runbook.write_text(
        "name: big\ntargets: host1\nsteps:\n  - name: Count\n    shell: seq 1 300000\n"
    )
    done = subprocess.run(
        [str(BIN / "runbook-exec"), "run", str(runbook), *served.lab.cli_args(), "--db",
         served.db, "--json", "--output-limit", "16000000"],
        capture_output=True, text=True, cwd=served.base, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    with chromium_browser() as browser:
        page = signed_in(browser, served)
        page.goto(f"{served.url}/runs/{run_id}/output?section=steps&index=0&host=host1")
        assert "lines 1–500 of 300000" in page.locator("p.count").inner_text()
        rows = page.locator("table.output tr")
        assert rows.count() == 500 and rows.first.inner_text().split() == ["1", "1"]
        page.click("text=last page")
        assert rows.last.inner_text().split() == ["300000", "300000"]
        page.fill("input[name=q]", "299999")
        page.click("form.filters button")
        assert "1 line of 300000 hold" in page.locator("p.count").inner_text()
        assert rows.count() == 1 and rows.first.inner_text().split() == ["299999", "299999"]
        page.goto(served.url + "/hosts")
        assert "host1" in page.locator("table").last.inner_text()
        page.click("table >> text=host2")
        assert served.failed in page.locator("main").inner_text()
        assert page.goto(served.url + "/hosts/nowhere") is not None
        assert "no run on record had host 'nowhere'" in page.locator("main").inner_text()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_web_view_serves_a_postgresql_store(runbook_exec: Any, write: Any, db_url: str) -> None:
    import urllib.request

    from runbook_exec.web import create_app

    runbook = write("rb.yml", "name: pg-web\ntargets: app\nsteps:\n  - shell: echo hi\n")
    done = runbook_exec("run", runbook, "--change-id", "CHG-PG", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    token = runbook_exec("tokens", "create", "pg").stdout.strip()
    with serving(create_app(db_url, b"p" * 32)) as url:

        def get(path: str) -> str:
            request = urllib.request.Request(url + path)
            request.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(request, timeout=10) as response:
                return str(response.read().decode())

        listed = json.loads(get("/api/v1/runs?change=CHG-PG"))
        assert [r["run_id"] for r in listed["runs"]] == [run_id]
        assert "pg-web" in get(f"/runs/{run_id}")
        assert json.loads(get("/api/v1/audit"))["intact"] is True


def test_the_other_commands_never_import_the_web_stack() -> None:
    """`serve` alone pays for FastAPI, uvicorn and prometheus-client."""
    probe = (
        "import sys, runbook_exec.cli, runbook_exec.cli.web, runbook_exec.service, "
        "runbook_exec.report; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_signing_in_never_sends_anyone_to_another_site(served: Served) -> None:
    with chromium_browser() as browser:
        context = browser.new_context()
        for target in (
            "//evil.example/x",
            "/\\\\evil.example",
            "https://evil.example/",
            "/runs\r\nX: y",
        ):
            answer = context.request.post(
                served.url + "/login",
                form={"user": "dana", "password": PASSWORD, "next": target},
                max_redirects=0,
            )
            assert answer.status == 303 and answer.headers["location"] == "/runs", target
        kept = context.request.post(
            served.url + "/login",
            form={"user": "dana", "password": PASSWORD, "next": "/runs?change=CHG-B"},
            max_redirects=0,
        )
        assert kept.headers["location"] == "/runs?change=CHG-B"


def gated_run(served: Served, operator: str) -> str:
    """A run of two hosts that waits for approval after the first; its id."""
    assert served.lab is not None
    gated = served.base / "gate2.yml"
    gated.write_text(
        "name: gate2\ntargets: app\nstrategy:\n  batches: [1]\n  between_batches:\n"
        "    - approve: Go on?\nsteps:\n  - shell: echo hi\n"
    )
    started = subprocess.run(
        [str(BIN / "runbook-exec"), "run", str(gated), *served.lab.cli_args(), "--db",
         served.db, "--json", "--no-input", "--operator", operator],
        capture_output=True, text=True, cwd=served.base, timeout=120,
    )  # fmt: skip
    assert started.returncode == 3, started.stdout + started.stderr
    return str(json.loads(started.stdout)["run_id"])


def api_post(served: Served, path: str, token: str, body: dict[str, Any]) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        served.url + path, data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_one_decision_per_gate_and_four_eyes_by_person_not_spelling(served: Served) -> None:
    """Eight approvals of one gate at once: one is recorded, the others are refused as
    decided meanwhile. A token named for the run's starter is the starter; a user whose
    name differs from another's only in case is refused when added."""
    run_id = gated_run(served, "ivan")
    assert (
        served.cli(
            "users", "add", "ivan", "--role", "operator", "--password-stdin", stdin=PASSWORD
        ).returncode
        == 0
    )
    alike = served.cli(
        "users", "add", "IVAN ", "--role", "operator", "--password-stdin", stdin=PASSWORD
    )
    assert alike.returncode == 2
    own = served.cli("tokens", "create", "ivan", "--role", "operator").stdout.strip()
    status, text = api_post(served, f"/api/v1/runs/{run_id}/approve", own, {"comment": "mine"})
    assert status == 409 and "four eyes" in text
    tokens = [
        served.cli("tokens", "create", f"ops{i}", "--role", "operator").stdout.strip()
        for i in range(2)
    ]
    answers: list[tuple[int, str]] = []
    threads = [
        threading.Thread(
            target=lambda i=i: answers.append(
                api_post(
                    served, f"/api/v1/runs/{run_id}/approve", tokens[i % 2], {"comment": f"c{i}"}
                )
            )
        )
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(code for code, _ in answers) == [200] + [409] * 7, answers
    assert all("altered" not in text for code, text in answers if code == 409), answers
    (won,) = [json.loads(text) for code, text in answers if code == 200]
    assert won["resumed"] is True  # the approved run was carried on
    events = served.cli("audit", "export", "--run", run_id).stdout
    assert events.count('\\"type\\":\\"gate.approved\\"') == 1


def test_sessions_end_when_they_should_and_the_record_decides_roles(served: Served) -> None:
    import http.client

    assert served.cli("users", "add", "uma", "--password-stdin", stdin=PASSWORD).returncode == 0
    with chromium_browser() as browser:
        context = browser.new_context()
        page = signed_in(context, served, "uma")
        cookie = next(c for c in context.cookies() if c["name"] == "rbx_session")
        # A bad page number is a 400 naming it, whatever digits it is written in.
        bad = context.request.get(served.url + "/runs?page=%C2%B2")
        assert bad.status == 400 and "page" in bad.text()
        page.click("header button[type=submit]")  # sign out
        page.wait_for_url("**/login")
        again = browser.new_context()
        again.add_cookies([cookie])
        assert "/login" in again.new_page().goto(served.url + "/runs").url  # revoked
    # A chunked body past the limit is refused while it is read.
    host, port = served.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/login")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Content-Type", "application/x-www-form-urlencoded")
    connection.endheaders()
    chunk = b"a" * 65536
    try:
        for _ in range(4):
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        connection.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server may close before all of it is sent
    assert connection.getresponse().status == 413
    # A role written into the users table by hand is not the record's: no sign-in.
    query(served.db, "UPDATE web_users SET role = 'admin' WHERE name = 'uma'")
    with chromium_browser() as browser:
        context = browser.new_context()
        refused = context.request.post(
            served.url + "/login", form={"user": "uma", "password": PASSWORD}, max_redirects=0
        )
        assert refused.status == 409 and "does not vouch for user uma" in refused.text()


def test_an_event_edited_in_place_shows_within_seconds(served: Served, tmp_path: Path) -> None:
    """The chain's head does not move when an old event is edited by hand: pages and
    /metrics still find it, within HISTORY_SECONDS."""
    import sqlite3
    import urllib.request

    from helpers import wait_until
    from runbook_exec.web import create_app

    copy = tmp_path / "copy.db"
    with (
        sqlite3.connect(served.db.removeprefix("sqlite:///")) as source,
        sqlite3.connect(copy) as target,
    ):
        source.backup(target)
    db = f"sqlite:///{copy}"
    token = subprocess.run(
        [str(BIN / "runbook-exec"), "tokens", "create", "watch", "--db", db],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    with serving(create_app(db, b"e" * 32)) as url:

        def intact() -> bool:
            request = urllib.request.Request(url + "/metrics")
            request.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(request, timeout=10) as response:
                return "runbook_exec_audit_chain_intact 1.0" in response.read().decode()

        assert intact()
        with sqlite3.connect(copy) as connection:
            connection.execute(
                "UPDATE audit_events SET body = replace(body, 'erin', 'eve') WHERE seq = "
                "(SELECT min(seq) FROM audit_events WHERE type = 'run.requested')"
            )
        wait_until(lambda: not intact(), 15)


def test_the_hosts_page_shows_the_drift_the_last_check_found(served: Served) -> None:
    from runbook_exec.recorders import Auditor
    from runbook_exec.store import Store

    store = Store.open(served.db)
    Auditor.outside_runs(store, "olaf").append(
        "releases.checked",
        hosts=["host1", "host2"],
        rows=[
            {
                "host": "host2",
                "root": "/srv/app",
                "recorded": "2.0",
                "found": "1.9",
                "problem": None,
                "drift": True,
            },
        ],
        drift=["host2"],
    )
    with chromium_browser() as browser:
        page = signed_in(browser, served)
        page.goto(served.url + "/hosts")
        text = page.locator("main").inner_text()
        assert "Checked by olaf" in text and "drift on host2" in text
        assert "1.9" in page.locator("table").filter(has_text="/srv/app").inner_text()
