"""Notifications on real hosts: a run that waits for approval, then fails on one host and
rolls back, tells a signed webhook, a webhook that fails twice before it takes one, one
that is down, and a chat target through Apprise (its json:// kind, to a local receiver).
The run is neither held up nor failed by them; every delivery is in the audit trail;
secrets are masked in every message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook_exec.notify import Target, sign, targets
from runbook_exec.testing.lab import SshLab
from runbook_exec.testing.services import WebhookReceiver, free_port

BIN = Path(sys.executable).parent
SECRET = "whsec-7f3a9"
TOKEN = "tok-SECRET-4242"

RUNBOOK = """\
name: notified
targets: app
params:
  token: {type: str, secret: true, env: APP_TOKEN}
strategy:
  batches: [1, "100%"]
  between_batches:
    - approve: Canary fine?
on_failure: rollback
steps:
  - name: Change
    shell: echo changed > {{ lab_root }}/changed
  - name: Check
    shell: >-
      if [ {{ inventory_hostname }} = host2 ]; then echo "token {{ token }} refused" >&2;
      exit 3; fi
rollback:
  - name: Undo
    shell: rm -f {{ lab_root }}/changed
"""


@pytest.fixture
def receivers() -> Iterator[tuple[WebhookReceiver, WebhookReceiver, WebhookReceiver]]:
    with (
        WebhookReceiver(SECRET) as signed,
        WebhookReceiver(SECRET, fail_first=2) as flaky,
        WebhookReceiver(None) as chat,
    ):
        yield signed, flaky, chat


def test_a_run_tells_its_targets_and_records_each_delivery(
    hosts: SshLab,
    tmp_path: Path,
    receivers: tuple[WebhookReceiver, WebhookReceiver, WebhookReceiver],
) -> None:
    signed, flaky, chat = receivers
    down = f"http://127.0.0.1:{free_port()}/hook"
    (tmp_path / "runbook-exec.toml").write_text(
        f'[[notify]]\nwebhook = "{signed.url}"\nsecret_env = "HOOK_SECRET"\n\n'
        f'[[notify]]\nwebhook = "{flaky.url}"\nsecret = "{SECRET}"\n'
        'events = ["run.started", "run.finished"]\n\n'
        f'[[notify]]\nwebhook = "{down}"\nsecret = "{SECRET}"\nretries = 1\n\n'
        f'[[notify]]\napprise = "json://127.0.0.1:{chat.url.split(":")[2]}"\n'
        'events = ["run.failure", "run.finished"]\n'
    )
    (tmp_path / "rb.yml").write_text(RUNBOOK)
    env = {**os.environ, "HOOK_SECRET": SECRET, "APP_TOKEN": TOKEN, "COLUMNS": "200"}
    db = f"sqlite:///{tmp_path / 'state.db'}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "runbook-exec"), *args, "--db", db],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
        )  # fmt: skip

    started = cli("run", "rb.yml", *hosts.cli_args(), "--json", "--no-input", "-l", "host1:host2")
    assert started.returncode == 3, started.stdout + started.stderr  # waits for approval
    run_id = json.loads(started.stdout)["run_id"]
    assert signed.events() == ["run.started", "gate.waiting"]
    assert cli("approve", run_id, "-m", "fine").returncode == 0
    resumed = cli("resume", run_id, "--no-input", "--json")
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "rolled_back"

    assert signed.events() == [
        "run.started", "gate.waiting", "run.started", "run.failure", "run.rollback",
        "run.finished",
    ]  # fmt: skip
    assert not signed.refused
    bodies = [r["body"] for r in signed.received]
    assert all(b["run_id"] == run_id and b["runbook"] == "notified" for b in bodies)
    failure = bodies[3]
    assert failure["host"] == "host2" and "exit 3" in failure["text"]
    everything = json.dumps([r["body"] for r in signed.received + chat.received])
    assert TOKEN not in everything and "********" in everything  # masked in every message
    assert bodies[-1]["status"] == "rolled_back"
    # A receiver checks the signature over the very bytes it got.
    last = signed.received[-1]
    raw = json.dumps(last["body"], sort_keys=True).encode()
    assert last["headers"]["X-Runbook-Exec-Signature"] == sign(SECRET, raw)
    # The flaky one got what it asked for, after its failures; the chat target its text.
    assert flaky.events() == ["run.started", "run.started", "run.finished"]
    assert [m["title"] for m in (r["body"] for r in chat.received)] == [
        "runbook-exec: run.failure", "runbook-exec: run.finished",
    ]  # fmt: skip
    assert "rolled back" in chat.received[-1]["body"]["message"]

    trail = cli("audit", "export")
    assert trail.returncode == 0, trail.stderr
    events = [json.loads(json.loads(line)["body"]) for line in trail.stdout.splitlines()]
    deliveries = [e for e in events if e["type"].startswith("notify.")]
    failed = [e for e in deliveries if e["type"] == "notify.failed"]
    assert {e["target"] for e in failed} == {down.rsplit("/", 1)[0] + "/…"}
    assert {e["attempts"] for e in failed} == {2}  # retries = 1
    flaky_first = next(e for e in deliveries if e["target"].startswith(flaky.url[:-5]))
    assert (flaky_first["type"], flaky_first["attempts"]) == ("notify.delivered", 3)
    assert all(e["run_id"] == run_id for e in deliveries)
    assert sum(e["type"] == "notify.delivered" for e in deliveries) == 6 + 3 + 2
    assert SECRET not in trail.stdout
    shown = json.loads(cli("show", run_id, "--json").stdout)["notifications"]
    assert len(shown) == len(deliveries)
    assert {(n["target"], n["delivered"]) for n in shown if not n["delivered"]} == {
        (down.rsplit("/", 1)[0] + "/…", False)
    }
    text = cli("show", run_id).stdout
    assert "notifications: 11 delivered, " in text
    assert f"not delivered run.started to {down.rsplit('/', 1)[0]}/… after 2 attempts" in text
    verified = cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"webhook": "http://x/hook"}, "needs `secret` or `secret_env`"),
        ({"webhook": "ftp://x/", "secret": "s"}, "http:// or https://"),
        ({"webhook": "http://x/", "apprise": "json://x", "secret": "s"}, "exactly one of"),
        ({"webhook": "http://x/", "secret": "s", "events": ["run.exploded"]}, "a list of"),
        ({"webhook": "http://x/", "secret": "s", "retries": 99}, "from 0 to 10"),
        ({"webhook": "http://x/", "secret_env": "RBX_NO_SUCH_VARIABLE"}, "has no RBX_NO_SUCH"),
        ({"webhook": "http://x/", "secret": "s", "colour": "red"}, "unknown key"),
        ({"apprise": "json://x", "secret": "s"}, "carries its own credentials"),
        ({"webhook": "http://[::1/hook", "secret": "s"}, "not a URL"),
        ({"webhook": "http://127.0.0.1:99999/hook", "secret": "s"}, "not a URL"),
        ({"webhook": "http://x/", "secret": "s", "timeout": float("nan")}, "at most 300"),
        ({"webhook": "http://x/", "secret": "s", "timeout": float("inf")}, "at most 300"),
        ({"webhook": "http://x/", "secret": 5}, "must be text"),
        ({"webhook": "http://x/", "secret_env": 5}, "name of an environment variable"),
    ],
)
def test_a_mistake_in_a_target_names_the_file_and_the_table(
    table: dict[str, object], says: str
) -> None:
    from runbook_exec.errors import InputError

    with pytest.raises(InputError) as raised:
        targets({"notify": [{"webhook": "https://ok/", "secret": "s"}, table]}, "rbx.toml")
    assert says in str(raised.value)
    assert "rbx.toml" in str(raised.value) and "notify[1]" in str(raised.value)


def test_a_bad_target_refuses_the_run_before_anything_is_recorded(
    hosts: SshLab, tmp_path: Path
) -> None:
    (tmp_path / "runbook-exec.toml").write_text('[[notify]]\nwebhook = "http://x/"\n')
    (tmp_path / "rb.yml").write_text("name: r\ntargets: app\nsteps:\n  - shell: 'true'\n")
    db = tmp_path / "state.db"
    done = subprocess.run(
        [str(BIN / "runbook-exec"), "run", "rb.yml", *hosts.cli_args(), "--db", f"sqlite:///{db}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "runbook-exec.toml" in done.stderr and "notify[0]" in done.stderr
    assert "runs" not in _tables_with_rows(db)


def _tables_with_rows(db: Path) -> set[str]:
    import sqlite3

    if not db.exists():
        return set()
    with sqlite3.connect(db) as connection:
        names = [
            r[0] for r in connection.execute("select name from sqlite_master where type='table'")
        ]
        return {n for n in names if connection.execute(f"select count(*) from {n}").fetchone()[0]}


def test_a_run_a_person_rejects_or_cancels_tells_of_its_end(hosts: SshLab, tmp_path: Path) -> None:
    with WebhookReceiver(SECRET) as hook:
        (tmp_path / "runbook-exec.toml").write_text(
            f'[[notify]]\nwebhook = "{hook.url}"\nsecret = "{SECRET}"\n'
        )
        (tmp_path / "rb.yml").write_text(
            "name: r\ntargets: app\nstrategy:\n  batches: [1, '100%']\n  between_batches:\n"
            "    - approve: Go on?\nsteps:\n  - shell: 'true'\n"
        )
        db = f"sqlite:///{tmp_path / 'state.db'}"

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(BIN / "runbook-exec"), *args, "--db", db],
                capture_output=True, text=True, cwd=tmp_path, timeout=120,
            )  # fmt: skip

        for decision in ("reject", "cancel"):
            done = cli("run", "rb.yml", *hosts.cli_args(), "--json", "--no-input")
            assert done.returncode == 3, done.stdout + done.stderr
            run_id = json.loads(done.stdout)["run_id"]
            decided = cli(decision, run_id, "-m", "not today")
            assert decided.returncode == 0, decided.stderr
    ends = [r["body"] for r in hook.received if r["body"]["event"] == "run.finished"]
    assert [e["status"] for e in ends] == ["rejected", "cancelled"]
    assert hook.events().count("gate.waiting") == 2


def test_a_signal_during_the_last_deliveries_cuts_the_wait_and_records_them(
    hosts: SshLab, tmp_path: Path
) -> None:
    """The run has ended when its process waits for its last deliveries: Ctrl-C or a
    SIGTERM then stops the wait, what did not go out is recorded, and the exit code is
    the run's. A redirect is not a delivery."""
    import http.server
    import signal
    import socket
    import threading
    import time

    class Moved(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    moved = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Moved)
    threading.Thread(target=moved.serve_forever, daemon=True).start()
    hang = socket.create_server(("127.0.0.1", 0))
    hang_port, moved_port = hang.getsockname()[1], moved.server_address[1]
    try:
        with WebhookReceiver(SECRET) as good:
            (tmp_path / "runbook-exec.toml").write_text(
                f'[[notify]]\nwebhook = "http://127.0.0.1:{hang_port}/hook"\n'
                f'secret = "{SECRET}"\ntimeout = 60\nretries = 0\n\n'
                f'[[notify]]\nwebhook = "http://127.0.0.1:{moved_port}/hook"\n'
                f'secret = "{SECRET}"\nretries = 0\n\n'
                f'[[notify]]\nwebhook = "{good.url}"\nsecret = "{SECRET}"\n'
            )
            (tmp_path / "rb.yml").write_text("name: r\ntargets: app\nsteps:\n  - shell: 'true'\n")
            db = f"sqlite:///{tmp_path / 'state.db'}"
            process = subprocess.Popen(
                [str(BIN / "runbook-exec"), "run", "rb.yml", *hosts.cli_args(), "--db", db,
                 "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while "run.finished" not in good.events() and time.monotonic() < deadline:
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=30)
    finally:
        hang.close()
        moved.shutdown()
        moved.server_close()
    assert process.returncode == 0, out + err  # the run's own exit code
    run_id = json.loads(out)["run_id"]
    shown = subprocess.run(
        [str(BIN / "runbook-exec"), "show", run_id, "--json", "--db", db],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    told = json.loads(shown.stdout)["notifications"]
    outcomes = {(n["target"].split(":")[-1], n["notified"], n["outcome"]) for n in told}
    not_sent = "not sent: the run's process ended first"
    assert (f"{hang_port}/…", "run.finished", not_sent) in outcomes
    assert {o for t, _, o in outcomes if t == f"{moved_port}/…"} == {"HTTP 302"}
    assert not any(n["delivered"] for n in told if n["target"].endswith(f"{moved_port}/…"))


def test_one_notify_table_is_a_list_of_one() -> None:
    (target,) = targets({"notify": {"webhook": "https://ok/", "secret": "s"}})
    assert target.url == "https://ok/"


def test_a_target_that_hangs_holds_up_neither_the_run_nor_the_others(
    hosts: SshLab, tmp_path: Path
) -> None:
    """Each target has its own deliveries; what is still going out when the process ends
    is recorded as not delivered."""
    import socket

    hang = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    hang.listen(16)
    try:
        with WebhookReceiver(SECRET) as good:
            (tmp_path / "runbook-exec.toml").write_text(
                f'[[notify]]\nwebhook = "http://127.0.0.1:{hang.getsockname()[1]}/hook"\n'
                f'secret = "{SECRET}"\ntimeout = 30\nretries = 10\n\n'
                f'[[notify]]\nwebhook = "{good.url}"\nsecret = "{SECRET}"\n'
            )
            (tmp_path / "rb.yml").write_text("name: r\ntargets: app\nsteps:\n  - shell: 'true'\n")
            db = f"sqlite:///{tmp_path / 'state.db'}"
            done = subprocess.run(
                [str(BIN / "runbook-exec"), "run", "rb.yml", *hosts.cli_args(), "--db", db,
                 "--json"],
                capture_output=True, text=True, cwd=tmp_path, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            assert good.events() == ["run.started", "run.finished"]
    finally:
        hang.close()
    run_id = json.loads(done.stdout)["run_id"]
    shown = subprocess.run(
        [str(BIN / "runbook-exec"), "show", run_id, "--json", "--db", db],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    told = json.loads(shown.stdout)["notifications"]
    assert sorted((n["notified"], n["delivered"]) for n in told) == [
        ("run.finished", False), ("run.finished", True), ("run.started", False),
        ("run.started", True),
    ]  # fmt: skip
    outcomes = {n["outcome"] for n in told if not n["delivered"]}
    assert outcomes == {
        "unknown: still being delivered when the run's process ended",
        "not sent: the run's process ended first",
    }


def test_targets_are_shown_without_their_secrets() -> None:
    hook = Target("webhook", "https://user:pw@hooks.example.com:8443/T0K3N?key=abc", "s")
    assert hook.shown == "https://hooks.example.com:8443/…"
    assert Target("apprise", "dingtalk://SECRETTOKEN/").shown == "dingtalk://…"
