"""The executor's policy over in-memory hosts (`runbook_exec.testing.fake`): batches and
max_fail_percentage, run_once, rollback order, unreachable hosts, and a resume that gives
later steps the results registered before the stop. No sshd: each test takes milliseconds.
The same behaviours are also tested end to end on real hosts (test_run, test_resume)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from runbook_exec.errors import RunbookError
from runbook_exec.events import EventSink, HostStatus, HostStepResult, StepStatus
from runbook_exec.executor import (
    Approver,
    Cancellation,
    Executor,
    RunContext,
    RunOptions,
    RunState,
)
from runbook_exec.inventory import select_hosts
from runbook_exec.params import parse_extra_vars, resolve_params
from runbook_exec.plan import Plan, build_plan
from runbook_exec.runbook import runbook_from_text
from runbook_exec.testing.fake import Answer, FakeHosts


class Kept(EventSink):
    """Every result and host status, in order."""

    def __init__(self) -> None:
        self.results: list[HostStepResult] = []
        self.statuses: dict[str, str] = {}
        self.messages: dict[str, str | None] = {}
        self.notes: list[str] = []
        self.plan: Plan | None = None  # the plan the run carried out

    def step_finished(self, batch: int, result: HostStepResult) -> None:
        self.results.append(result)

    def host_status(self, host: str, status: HostStatus, message: str | None = None) -> None:
        self.statuses[host] = status
        self.messages[host] = message

    def note(self, text: str) -> None:
        self.notes.append(text)


def run(
    tmp_path: Path,
    body: str,
    *,
    hosts: int = 4,
    answer: Answer | None = None,
    down: Sequence[str] = (),
    state: RunState | None = None,
    cancel: Cancellation | None = None,
    approver: Approver | None = None,
    host_vars: str = "",
    extra_vars: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> tuple[str, FakeHosts, Kept]:
    """Plan `body` (a runbook after its name and targets) for hosts h1…hN and run it over
    fake hosts. `host_vars` follows each host's name in the INI inventory."""
    inventory = tmp_path / "hosts.ini"
    names = [f"h{i}" for i in range(1, hosts + 1)]
    inventory.write_text("[app]\n" + "\n".join(f"{n} {host_vars}" for n in names) + "\n")
    book = runbook_from_text("name: policy\ntargets: app\n" + body, str(tmp_path / "rb.yml"))
    chosen = select_hosts([inventory], "app")
    params = resolve_params(book, parse_extra_vars(list(extra_vars)), environ or {}, tmp_path)
    plan = build_plan(book, chosen, params, run={"id": "r1", "operator": "anna"})
    fake, kept = FakeHosts(answer, down), Kept()
    kept.plan = plan
    context = RunContext(
        "r1",
        "anna",
        book,
        chosen,
        plan,
        params,
        RunOptions(known_hosts=tmp_path / "known_hosts"),
        connect=fake.connect,
    )
    executor = Executor(context, kept, state, approver, cancel)
    return asyncio.run(executor.execute()), fake, kept


def fails_on(*hosts: str, command: str = "break") -> Answer:
    return lambda host, sent: 1 if host in hosts and command in sent else 0


STEPS = "steps:\n  - shell: mark\n  - shell: break\n  - shell: after\n"


def test_a_batch_over_max_fail_percentage_stops_before_the_next_batch(tmp_path: Path) -> None:
    status, fake, kept = run(tmp_path, "strategy: {batches: [2]}\n" + STEPS, answer=fails_on("h1"))
    assert status == "failed"
    assert fake.commands("h1") == ["mark", "break"]
    assert fake.commands("h2") == ["mark", "break"]  # the batch stops after the breaking step
    assert fake.commands("h3") == fake.commands("h4") == []
    assert kept.statuses == {"h1": "failed", "h2": "stopped"}


def test_failures_within_max_fail_percentage_go_on(tmp_path: Path) -> None:
    strategy = "strategy: {batches: [2], max_fail_percentage: 50}\n"
    status, fake, kept = run(tmp_path, strategy + STEPS, answer=fails_on("h1"))
    assert status == "failed"  # a failed host still fails the run
    assert fake.commands("h1") == ["mark", "break"]
    assert all(fake.commands(h) == ["mark", "break", "after"] for h in ("h2", "h3", "h4"))
    assert kept.statuses == {"h1": "failed", "h2": "ok", "h3": "ok", "h4": "ok"}


def test_run_once_runs_on_one_host_and_shares_what_it_registered(tmp_path: Path) -> None:
    body = """\
strategy: {batches: [2]}
steps:
  - shell: make-token
    run_once: true
    register: token
  - shell: "use {{ token.stdout }}"
"""
    answer: Answer = lambda host, sent: f"token-of-{host}" if sent == "make-token" else 0  # noqa: E731
    status, fake, kept = run(tmp_path, body, answer=answer)
    assert status == "succeeded"
    assert [h for h, c in fake.sent if c == "make-token"] == ["h1"]
    assert all(fake.commands(h)[-1] == "use token-of-h1" for h in ("h1", "h2", "h3", "h4"))
    skipped = [r for r in kept.results if r.index == 0 and r.status == StepStatus.SKIPPED]
    assert {r.host for r in skipped} == {"h2", "h3", "h4"}
    assert {r.message for r in skipped} == {"run_once: ran on h1"}


def test_rollback_runs_newest_batch_first_on_the_hosts_changed_only(tmp_path: Path) -> None:
    body = """\
strategy: {batches: [1]}
on_failure: rollback
steps:
  - shell: "deploy {{ inventory_hostname }}"
rollback:
  - shell: "undo {{ inventory_hostname }}"
"""
    status, fake, kept = run(tmp_path, body, answer=fails_on("h3", command="deploy"))
    assert status == "rolled_back"
    undone = [c for _, c in fake.sent if c.startswith("undo")]
    assert undone == ["undo h3", "undo h2", "undo h1"]
    assert fake.commands("h4") == []
    assert "h4" not in kept.statuses  # its batch never started
    assert {kept.statuses[h] for h in ("h1", "h2", "h3")} == {"rolled_back"}


def test_hosts_where_every_rollback_step_skipped_say_there_was_nothing_to_undo(
    tmp_path: Path,
) -> None:
    from rich.console import Console

    from runbook_exec.live import print_outcome

    body = """\
strategy: {batches: [1]}
on_failure: rollback
steps:
  - shell: "deploy {{ inventory_hostname }}"
    register: deployed
rollback:
  - shell: "undo {{ inventory_hostname }}"
    when: inventory_hostname == 'h2'
"""
    status, fake, kept = run(tmp_path, body, answer=fails_on("h3", command="deploy"))
    assert status == "rolled_back"
    assert [c for _, c in fake.sent if c.startswith("undo")] == ["undo h2"]
    assert {h: kept.statuses[h] for h in ("h1", "h2", "h3")} == dict.fromkeys(
        ("h1", "h2", "h3"), "rolled_back"
    )
    idle = {h for h, m in kept.messages.items() if m and m.startswith("nothing to undo")}
    assert idle == {"h1", "h3"}
    console = Console(record=True, width=200)
    hosts = {**kept.statuses, "h4": "not_reached"}
    print_outcome(console, "RUN", status, hosts, 1, idle)
    assert "(1 not reached, 3 rolled back; of those rolled back, 2 had nothing to undo)" in (
        console.export_text()
    )


def test_an_unreachable_host_fails_and_counts_against_the_batch(tmp_path: Path) -> None:
    strategy = "strategy: {batches: [4], max_fail_percentage: 25}\n"
    status, fake, kept = run(tmp_path, strategy + STEPS, down=["h2"])
    assert status == "failed"
    first = {r.host: r for r in kept.results if r.index == 0}
    assert first["h2"].status == StepStatus.UNREACHABLE
    assert "connection refused" in (first["h2"].message or "")
    assert all(fake.commands(h) == ["mark", "break", "after"] for h in ("h1", "h3", "h4"))


def test_a_resume_gives_later_steps_what_was_registered_before_the_stop(
    tmp_path: Path,
) -> None:
    body = 'steps:\n  - shell: read\n    register: seen\n  - shell: "echo {{ seen.stdout }}"\n'
    finished: dict[tuple[str, int, str], Any] = {
        ("steps", 0, host): HostStepResult(
            host, "steps", 0, "shell", StepStatus.OK, 0, f"before-{host}\n"
        )
        for host in ("h1", "h2")
    }
    status, fake, _ = run(tmp_path, body, hosts=2, state=RunState(finished=finished))
    assert status == "succeeded"
    assert sorted(fake.sent) == [("h1", "echo before-h1"), ("h2", "echo before-h2")]


def test_a_failing_command_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    tries: dict[str, int] = {}

    def flaky(host: str, sent: str) -> int:
        tries[host] = tries.get(host, 0) + 1
        return 0 if tries[host] >= 3 else 1

    body = "steps:\n  - shell: flaky\n    retries: 2\n    delay: 0s\n"
    status, _, kept = run(tmp_path, body, hosts=2, answer=flaky)
    assert status == "succeeded"
    assert {r.host: r.attempts for r in kept.results} == {"h1": 3, "h2": 3}
    short = body.replace("retries: 2", "retries: 1")
    tries.clear()
    status, _, kept = run(tmp_path, short, hosts=1, answer=flaky)
    assert status == "failed" and kept.results[0].attempts == 2


def test_a_cancellation_starts_no_new_work_and_stops_retrying(tmp_path: Path) -> None:
    cancel = Cancellation()

    def stop_on_first(host: str, sent: str) -> int:
        cancel.request()  # as Ctrl-C would, while the first command runs
        return 1

    body = "strategy: {batches: [1]}\nsteps:\n  - shell: one\n    retries: 5\n    delay: 0s\n"
    status, fake, _ = run(tmp_path, body + "  - shell: two\n", answer=stop_on_first, cancel=cancel)
    assert status == "interrupted"
    assert fake.sent == [("h1", "one")]  # no retry, no second step, no second batch


def asks(answers: list[str]) -> Approver:
    """An approver that notes each question and says yes."""

    async def approve(message: str) -> tuple[bool, str | None]:
        answers.append(message)
        return True, None

    return approve


def test_a_gate_step_whose_when_is_false_is_skipped_not_asked(tmp_path: Path) -> None:
    body = """\
params:
  careful: {type: bool, default: false}
strategy: {batches: [2]}
steps:
  - shell: one
  - approve: "Go on with {{ careful }}?"
    when: careful
  - shell: two
"""
    asked: list[str] = []
    status, fake, kept = run(tmp_path, body, approver=asks(asked))
    assert status == "succeeded" and asked == []
    assert all(fake.commands(h) == ["one", "two"] for h in ("h1", "h2", "h3", "h4"))
    assert any("skipped (when 'careful' is false)" in note for note in kept.notes)
    status, _, _ = run(tmp_path, body, approver=asks(asked), extra_vars=["careful=true"])
    assert status == "succeeded" and asked == ["Go on with True?"] * 2  # once per batch


def test_a_gate_that_reads_a_registered_result_is_decided_by_the_batch_first_live_host(
    tmp_path: Path,
) -> None:
    body = """\
strategy: {batches: [2]}
steps:
  - shell: check
    register: check
  - approve: "{{ inventory_hostname }} says {{ check.stdout }}: go on?"
    when: check.stdout != 'fine'
  - shell: two
"""

    def answer(host: str, sent: str) -> str:
        return "odd" if host in ("h1", "h4") and sent == "check" else "fine"

    asked: list[str] = []
    status, _, _ = run(tmp_path, body, approver=asks(asked), answer=answer)
    assert status == "succeeded"
    # Batch 1's first host registered "odd": asked; batch 2's (h3) "fine": not asked.
    assert asked == ["h1 says odd: go on?"]
    # With h1 down, h2 is batch 1's first live host: it said "fine", so nobody is asked.
    asked.clear()
    status, _, _ = run(tmp_path, body, approver=asks(asked), answer=answer, down=["h1"])
    assert status == "failed" and asked == []


def test_an_inventory_variable_that_uses_a_registered_result_is_rendered_at_run_time(
    tmp_path: Path,
) -> None:
    body = """\
steps:
  - shell: port
    register: port
  - shell: "curl {{ url }}"
  - shell: "again {{ url }}"
"""
    answer: Answer = lambda host, sent: f"80{host[1]}" if sent == "port" else 0  # noqa: E731
    status, fake, kept = run(
        tmp_path, body, hosts=2, answer=answer, host_vars="url=http://x:{{port.stdout}}/"
    )
    assert status == "succeeded", kept.results
    assert fake.commands("h1") == ["port", "curl http://x:801/", "again http://x:801/"]
    assert fake.commands("h2") == ["port", "curl http://x:802/", "again http://x:802/"]
    assert kept.plan is not None
    shown = kept.plan.steps[2].actions[0]
    assert shown.action == {"shell": "again http://x:<port.stdout at run time>/"}


def test_assert_conditions_are_evaluated_never_rendered(tmp_path: Path) -> None:
    body = """\
params:
  version: {required: true}
steps:
  - assert: "version == '1.0'"
  - assert: "'{{ version }}' == '1.0'"
"""
    status, _, kept = run(tmp_path, body, hosts=1, extra_vars=["version=1.0"])
    assert [r.status for r in kept.results] == ["ok", "failed"]  # the second: a literal
    # Rendered, the second would read "'x' or 'a' == '1.0'": true, whatever the version.
    status, _, kept = run(tmp_path, body, hosts=1, extra_vars=["version=x' or 'a"])
    assert status == "failed"
    assert kept.results[0].stderr == "assertion failed: version == '1.0'"
    body = body.replace("'{{ version }}' == '1.0'", "{{ version }} == '1.0'")
    with pytest.raises(RunbookError) as refused:
        run(tmp_path, body, hosts=1, extra_vars=["version=1.0"])
    problem = refused.value.problems[0]
    assert problem.field == "steps[1].assert.that[0]" and "expression syntax" in problem.message


def test_an_undefined_name_in_when_is_a_plan_problem_or_a_failed_host(tmp_path: Path) -> None:
    with pytest.raises(RunbookError) as refused:
        run(tmp_path, "steps:\n  - shell: one\n    when: nosuchname\n", hosts=1)
    problem = refused.value.problems[0]
    assert problem.field == "steps[0].when" and "'nosuchname' is undefined" in problem.message
    body = "steps:\n  - shell: one\n    register: r\n  - shell: two\n    when: r.nosuch\n"
    status, fake, kept = run(tmp_path, body, hosts=1)
    assert status == "failed" and fake.commands("h1") == ["one"]
    assert "has no attribute 'nosuch'" in (kept.results[-1].message or "")
    assert kept.statuses == {"h1": "failed"}


def test_a_resume_shares_a_run_once_result_with_the_hosts_it_skipped(tmp_path: Path) -> None:
    body = """\
steps:
  - shell: make-token
    run_once: true
    register: token
  - shell: "use {{ token.stdout }}"
"""
    ran = HostStepResult("h1", "steps", 0, "shell", StepStatus.OK, 0, "token-of-h1\n")
    skipped = HostStepResult(
        "h2", "steps", 0, "shell", StepStatus.SKIPPED, message="run_once: ran on h1"
    )
    finished = {("steps", 0, "h1"): ran, ("steps", 0, "h2"): skipped}
    status, fake, _ = run(tmp_path, body, hosts=2, state=RunState(finished=finished))
    assert status == "succeeded"
    assert sorted(fake.sent) == [("h1", "use token-of-h1"), ("h2", "use token-of-h1")]


def test_a_rejected_gate_goes_through_on_failure(tmp_path: Path) -> None:
    body = """\
strategy:
  batches: [1, 2, 1]
  between_batches: [{approve: "Go on?"}]
on_failure: {policy}
steps:
  - shell: change
rollback:
  - shell: undo
"""

    async def first_yes_then_no(message: str) -> tuple[bool, str | None]:
        asked.append(message)
        return len(asked) == 1, "errors up" if len(asked) > 1 else None

    asked: list[str] = []
    status, fake, kept = run(
        tmp_path, body.replace("{policy}", "rollback"), approver=first_yes_then_no
    )
    assert status == "rolled_back" and asked == ["Go on?", "Go on?"]
    undone = [h for h, c in fake.sent if c == "undo"]  # newest batch first
    assert sorted(undone[:2]) == ["h2", "h3"] and undone[2:] == ["h1"]
    assert fake.commands("h4") == []
    assert {kept.statuses[h] for h in ("h1", "h2", "h3")} == {"rolled_back"}
    asked.clear()
    status, fake, _ = run(tmp_path, body.replace("{policy}", "stop"), approver=first_yes_then_no)
    assert status == "rejected" and not [c for _, c in fake.sent if c == "undo"]


def test_a_skipped_step_registers_that_it_was_skipped_as_ansible_does(tmp_path: Path) -> None:
    body = """\
steps:
  - shell: echo first
    register: made
    when: inventory_hostname == 'h1'
  - shell: "echo {{ 'skipped' if made.skipped else made.stdout }}"
"""
    status, fake, _ = run(tmp_path, body, hosts=2, answer=lambda host, command: "first\n")
    assert status == "succeeded"
    assert fake.commands("h1") == ["echo first", "echo first"]
    assert fake.commands("h2") == ["echo skipped"]
