"""The plan is what runs: every command a host receives is the recorded plan's action for
that host, byte for byte once its secrets are masked (on real sshd hosts, with a transport
that notes what each session is asked to run before it runs it)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runbook_exec import runner
from runbook_exec.events import EventSink, HostStepResult, register_sink
from runbook_exec.executor import RunOptions
from runbook_exec.inventory import Host
from runbook_exec.masking import MASK
from runbook_exec.prepare import prepare
from runbook_exec.store import Store
from runbook_exec.testing.lab import SshLab
from runbook_exec.transports.base import CommandResult, Session
from runbook_exec.transports.guard import Mark
from runbook_exec.transports.ssh import SshOptions, connect

SECRET = "s3cr3t-T0ken"

RUNBOOK = """\
name: recorded-is-executed
targets: app
params:
  version: {required: true}
  token: {secret: true, env: RBX_TEST_TOKEN}
strategy: {batches: [2]}
steps:
  - name: Stamp
    shell: >-
      echo {{ inventory_hostname }} {{ version }} {{ run.id }} {{ run.operator }}
      {{ ansible_port }} > {{ lab_root | quote }}/stamp
  - name: With a secret
    shell: "printf %s {{ token | quote }} | wc -c"
    register: counted
  - name: Only host2
    command: [touch, "{{ lab_root }}/only"]
    when: inventory_hostname == 'host2'
  - name: From a registered result
    shell: echo {{ counted.stdout | trim }} > {{ lab_root | quote }}/counted
"""


class Noting:
    """A session that notes each command before the real one runs it."""

    def __init__(self, host: str, real: Session, sent: list[tuple[str, str]]) -> None:
        self.host, self.real, self.sent = host, real, sent

    async def run(self, command: str, timeout: float, mark: Mark | None = None) -> CommandResult:
        self.sent.append((self.host, command))
        return await self.real.run(command, timeout, mark)

    async def upload(self, local: Path, remote: str, mode: str | None) -> None:
        await self.real.upload(local, remote, mode)

    async def close(self) -> None:
        await self.real.close()


class Listener(EventSink):
    """A sink registered for every run, as a notifier would be."""

    def __init__(self, run_id: str, heard: list[tuple[str, str]]) -> None:
        self.run_id, self.heard = run_id, heard

    def step_finished(self, batch: int, result: HostStepResult) -> None:
        self.heard.append((self.run_id, result.host))


class Broken(EventSink):
    def batch_started(self, batch: int, hosts: Sequence[str]) -> None:
        raise RuntimeError("a listener's bug")


def cannot_start(run_id: str) -> EventSink:
    raise RuntimeError("a listener that cannot start")


def recorded_plan(store: Store, run_id: str) -> dict[str, Any]:
    for event in store.audit_events():
        if event["run_id"] == run_id and event["type"] == "run.requested":
            # The plan is the event's payload (its SHA-256 is in the body, which is hashed).
            return json.loads(event["payload"])["plan"]  # type: ignore[no-any-return]
    raise AssertionError("no run.requested event")


def test_every_command_sent_is_the_recorded_plan_masked(
    hosts: SshLab, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("RBX_TEST_TOKEN", SECRET)
    monkeypatch.setenv("RUNBOOK_EXEC_OPERATOR", "ops-anna")
    path = tmp_path / "rb.yml"
    path.write_text(RUNBOOK)
    sent: list[tuple[str, str]] = []

    async def noting(host: Host, options: SshOptions) -> Session:
        return Noting(host.name, await connect(host, options), sent)

    from runbook_exec.store.audit import operator_name

    prepared = prepare(
        path,
        [hosts.inventory],
        ["version=1.4.2"],
        None,
        operator_name(None),
        run_id=runner.new_run_id(),
    )
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    heard: list[tuple[str, str]] = []
    unregister = [
        register_sink(lambda run_id: Listener(run_id, heard)),
        register_sink(lambda run_id: Broken()),
        register_sink(cannot_start),
    ]
    try:
        outcome = runner.start(
            store,
            prepared,
            operator="ops-anna",
            change_id=None,
            reason=None,
            options=RunOptions(known_hosts=hosts.known_hosts),
            view=lambda run_id: EventSink(),
            approver=None,
            connect=noting,
        )
    finally:
        for remove in unregister:
            remove()
    assert outcome.status == "succeeded", outcome
    # A registered listener heard every host-step; ones that raised broke nothing.
    assert len(heard) == 4 * 4 and {run for run, _ in heard} == {outcome.run_id}
    plan = recorded_plan(store, outcome.run_id)
    assert plan == json.loads(prepared.plan.to_json())

    planned: dict[tuple[str, str], str] = {}  # (host, command as recorded) for what was planned
    for step in plan["steps"]:
        for action in step["actions"]:
            if action["action"] is None:
                continue
            fields = action["action"]
            command = fields.get("shell") or " ".join(fields.get("command", []))
            for host in action["hosts"]:
                planned[(host, step["name"])] = command

    executed = [(host, command) for host, command in sent if not command.startswith("__")]
    assert len(executed) == 4 + 4 + 1 + 4, executed
    for host, command in executed:
        masked = command.replace(SECRET, MASK)
        matches = [name for (h, name), text in planned.items() if h == host and text == masked]
        if "counted" in command:  # rendered at run time, from what the host registered
            assert f"echo {len(SECRET)} > " in command
            assert "at run time>" in planned[(host, "From a registered result")]
            continue
        assert len(matches) == 1, (host, masked, planned)
    stamp = (hosts.host("host3").root / "stamp").read_text().split()
    assert stamp == ["host3", "1.4.2", outcome.run_id, "ops-anna", str(hosts.host("host3").port)]
    assert SECRET not in json.dumps(plan)
    assert any(SECRET in command for _, command in sent)  # the real value ran, not the mask


def test_a_secret_changed_past_recognition_shows_masked(
    hosts: SshLab, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("RBX_TEST_TOKEN", SECRET)
    path = tmp_path / "rb.yml"
    path.write_text(
        RUNBOOK.split("steps:")[0]
        + "steps:\n  - shell: echo {{ token | upper }} {{ token | reverse | join }} {{ version }}\n"
    )
    prepared = prepare(path, [hosts.inventory], ["version=2"], None, "anna")
    shown = json.dumps(prepared.plan.to_dict())
    assert SECRET.upper() not in shown and SECRET[::-1] not in shown
    # Shown rendered with a stand-in for the secret: what `reverse` made of it is no secret.
    assert f"echo {MASK} " in shown and " 2" in shown
    command = prepared.plan.steps[0].hosts["host1"].step
    assert command is not None and SECRET.upper() in command.model_dump()["shell"]


def test_what_a_template_makes_of_a_secret_is_masked_in_the_plan(tmp_path: Path) -> None:
    """Directly, transformed beside its raw form, and through an inventory variable: the
    hosts get the real values, the recorded plan none of them (over in-memory hosts)."""
    from test_policy import run

    body = """\
params:
  token: {secret: true, env: RBX_TEST_TOKEN}
steps:
  - shell: "echo {{ token }} {{ token | upper }} {{ token | replace('3', 'E') }}"
  - shell: "curl -H {{ auth | quote }}"
  - shell: "echo {{ token | replace('s', 'z') }}"
    register: reversed
  - shell: "echo {{ reversed.stdout }} {{ token | upper }}"
"""
    changed = SECRET.replace("s", "z")
    answer = lambda host, sent: changed if sent == f"echo {changed}" else 0  # noqa: E731
    status, fake, kept = run(
        tmp_path,
        body,
        hosts=2,
        answer=answer,
        host_vars="auth='Bearer {{ token|upper }}'",
        environ={"RBX_TEST_TOKEN": SECRET},
    )
    assert status == "succeeded", kept.results
    encoded = SECRET.replace("3", "E")
    assert fake.commands("h1") == [
        f"echo {SECRET} {SECRET.upper()} {encoded}",
        f"curl -H 'Bearer {SECRET.upper()}'",
        f"echo {changed}",
        f"echo {changed} {SECRET.upper()}",
    ]
    assert kept.plan is not None
    recorded = kept.plan.to_json()
    for form in (SECRET, SECRET.upper(), encoded, changed):
        assert form not in recorded
    shown = [step.actions[0].action for step in kept.plan.steps]
    assert shown[1] == {"shell": f"curl -H 'Bearer {MASK.upper()}'"}
    assert shown[3] == {"shell": f"echo <reversed.stdout at run time> {MASK.upper()}"}
