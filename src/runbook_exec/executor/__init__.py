"""Carries a plan out: batch by batch, each step on the batch's hosts at once, with retries,
timeouts, the failure policy, gates and rollback.

Everything it does goes to one `EventSink` before it goes on, so a run killed at any point can
be resumed from the store: host-steps that finished are not run again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import HostKeyError
from ..events import (
    HOST_FAILED,
    STEP_FAILED,
    EventSink,
    HostStatus,
    HostStepResult,
    RunStatus,
    Section,
    StepStatus,
)
from ..inventory import Host
from ..params import ResolvedParams
from ..plan import Plan, render_action
from ..record.values import RecordAltered
from ..runbook import RunbookFile
from ..steps import HostContext, Scope, StepBase
from ..templating import HostVars, TemplateProblem, evaluate
from ..transports.base import CommandResult, Session, Unreachable
from ..transports.ssh import SshOptions, connect
from .ansible import AnsibleStep

Approver = Callable[[str], Awaitable[tuple[bool, str | None] | None]]
Connect = Callable[[Host, SshOptions], Awaitable[Session]]
"""Opens a session to a host: SSH's `connect`, or another transport."""


@dataclass
class RunOptions:
    forks: int = 50
    timeout: float = 600.0
    connect_timeout: float = 10.0
    output_limit: int = 64 * 1024
    known_hosts: Path = field(default_factory=lambda: Path("~/.ssh/known_hosts").expanduser())
    accept_new_host_keys: bool = False


@dataclass
class RunState:
    """What is known about a run before the executor starts (empty for a new run)."""

    finished: dict[tuple[str, int, str], HostStepResult] = field(default_factory=dict)
    host_status: dict[str, str] = field(default_factory=dict)
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)


class Executor:
    def __init__(
        self,
        run_id: str,
        operator: str,
        runbook_file: RunbookFile,
        hosts: Sequence[Host],
        plan: Plan,
        params: ResolvedParams,
        recorder: EventSink,
        options: RunOptions,
        state: RunState | None = None,
        approver: Approver | None = None,
        release_history: Callable[[str, str], str | None] = lambda host, root: None,
        inventory: Sequence[str] = (),
        connect: Connect = connect,
    ) -> None:
        self.run_id = run_id
        self.operator = operator
        self.file = runbook_file
        self.book = runbook_file.runbook
        self.hosts = {h.name: h for h in hosts}
        self.batches = [list(b) for b in plan.batches]
        self.planned = {(s.section, s.index): s for s in (*plan.steps, *plan.rollback)}
        self.params = params
        self.recorder = recorder
        self.options = options
        self.state = state or RunState()
        self.approver = approver
        self.release_history = release_history
        # The gates after each batch (the same after every batch), as the plan rendered them.
        self.between = [(g.wait, g.approve) for g in plan.gates if g.after_batch == 1]
        self.inventory = list(inventory)  # the sources, for playbook and module steps
        self.connect = connect
        self.abandoning = False  # a second Ctrl-C: cancel even what is running
        self.stopping = False
        self.sessions: dict[str, asyncio.Future[Session]] = {}
        self.failed: dict[str, str] = {
            h: s for h, s in self.state.host_status.items() if s in HOST_FAILED
        }
        self.registered: dict[str, dict[str, Any]] = {h: {} for h in self.hosts}
        self.run_once_done: dict[tuple[str, int], dict[str, Any]] = {}
        self.forks = asyncio.Semaphore(max(1, options.forks))
        self.secrets = params.secrets
        self.ssh = SshOptions(
            options.known_hosts,
            options.accept_new_host_keys,
            options.connect_timeout,
            options.output_limit,
            self.secrets,
        )
        base = {**params.values, "run": {"id": run_id, "operator": operator}}
        self.names = {h.name: HostVars(h.template_vars(), base) for h in hosts}
        self._restore_registered()
        self.ansible = AnsibleStep(self)

    # --- the run ----------------------------------------------------------------------------

    async def execute(self) -> str:
        """Run to the end, or to a stop; returns the run's status."""
        try:
            status = await self._batches()
            await self.recorder.flush()
            return status
        finally:
            await self._close()

    async def _batches(self) -> str:
        policy = self.book.strategy
        for number, batch in enumerate(self.batches, 1):
            if self.stopping:
                return RunStatus.INTERRUPTED
            if self._batch_done(number, batch):
                continue
            self.recorder.batch_started(number, batch)
            for host in batch:
                if host not in self.failed:
                    self.recorder.host_status(host, HostStatus.ACTIVE)
            outcome = await self._section(Section.STEPS, self.book.steps, number, batch)
            if outcome:
                return outcome
            if self.stopping:
                return RunStatus.INTERRUPTED
            breached = self._failed_share(batch) > policy.max_fail_percentage
            last = len(self.book.steps) - 1
            for host in batch:
                if host not in self.failed:
                    complete = (Section.STEPS, last, host) in self.state.finished
                    self.recorder.host_status(
                        host,
                        HostStatus.OK if complete else HostStatus.STOPPED,
                        None if complete else "the batch stopped early",
                    )
            if breached and self.book.on_failure != "continue":
                return await self._stop(number)
            if number < len(self.batches):
                for index, (wait, approve) in enumerate(self.between):
                    outcome = await self._gate(f"after:{number}:{index}", wait, approve)
                    if outcome:
                        return outcome
        return RunStatus.FAILED if self.failed else RunStatus.SUCCEEDED

    def _batch_done(self, number: int, batch: Sequence[str]) -> bool:
        """On resume: every host of this batch finished the last step or dropped out, and
        the gates after it were passed."""
        last = len(self.book.steps) - 1
        hosts_done = all(
            host in self.failed or (Section.STEPS, last, host) in self.state.finished
            for host in batch
        )
        gates = range(len(self.between)) if number < len(self.batches) else ()
        gates_done = all(
            self.state.gates.get(f"after:{number}:{i}", {}).get("status") in ("approved", "done")
            for i in gates
        )
        return hosts_done and gates_done

    def _failed_share(self, batch: Sequence[str]) -> float:
        return 100.0 * sum(1 for h in batch if h in self.failed) / max(len(batch), 1)

    async def _stop(self, number: int) -> str:
        names = ", ".join(h for h in self.batches[number - 1] if h in self.failed)
        self.recorder.note(f"batch {number} failed on {names}: no further batch starts")
        if self.book.on_failure == "rollback":
            return await self._rollback(number)
        return RunStatus.FAILED

    async def _rollback(self, up_to: int) -> str:
        """The rollback steps on every host this run changed, newest batch first."""
        touched = {
            host
            for (section, _, host), r in self.state.finished.items()
            if section == Section.STEPS and r.status != StepStatus.SKIPPED
        }
        failures = False
        for number in range(up_to, 0, -1):
            hosts = [h for h in self.batches[number - 1] if h in touched]
            if not hosts:
                continue
            self.recorder.note(f"rolling back batch {number}: {', '.join(hosts)}")
            for host in hosts:
                self.failed.pop(host, None)
            outcome = await self._section(Section.ROLLBACK, self.book.rollback, number, hosts)
            if outcome:
                return outcome
            for host in hosts:
                failures |= host in self.failed
                self.recorder.host_status(
                    host,
                    HostStatus.ROLLBACK_FAILED if host in self.failed else HostStatus.ROLLED_BACK,
                )
        return RunStatus.ROLLBACK_FAILED if failures else RunStatus.ROLLED_BACK

    async def _section(
        self, section: str, steps: Sequence[StepBase], number: int, batch: Sequence[str]
    ) -> str | None:
        """Run `steps` on the batch's live hosts; a non-None result ends the run with it."""
        policy = self.book.strategy
        for index, step in enumerate(steps):
            if self.stopping:
                return RunStatus.INTERRUPTED
            live = [h for h in batch if h not in self.failed]
            if not live:
                return None
            if step.scope is Scope.BATCH:
                shown = self.planned[(section, index)].hosts["*"].shown or {}
                outcome = await self._gate(
                    f"{section}:{number}:{index}", shown.get("wait"), shown.get("approve")
                )
                if outcome:
                    return outcome
                continue
            await self._step(section, index, step, number, live)
            breached = self._failed_share(batch) > policy.max_fail_percentage
            if section == Section.STEPS and breached and self.book.on_failure != "continue":
                return None  # the batch stops here, as Ansible's does; the caller applies policy
        return None

    async def _step(
        self, section: str, index: int, step: StepBase, number: int, live: Sequence[str]
    ) -> None:
        todo = [h for h in live if (section, index, h) not in self.state.finished]
        if step.run_once:
            await self._run_once(section, index, step, number, live, todo)
            return
        if not todo:
            return
        if step.scope is Scope.HOSTS:
            self.recorder.steps_started(number, section, index, step.title, todo)
            await self.recorder.flush()
            await self.ansible.run(section, index, step, number, todo)
            return
        self.recorder.steps_started(number, section, index, step.title, todo)
        await self.recorder.flush()  # recorded as started before any host begins it
        await asyncio.gather(*(self._host_step(section, index, step, number, h) for h in todo))

    async def _run_once(
        self,
        section: str,
        index: int,
        step: StepBase,
        number: int,
        live: Sequence[str],
        todo: Sequence[str],
    ) -> None:
        """Once per run: on the first live host of the first batch that reaches the step."""
        done = next(
            (
                r
                for (s, i, _), r in self.state.finished.items()
                if s == section and i == index and r.status != StepStatus.SKIPPED
            ),
            None,
        )
        if done is None and todo:
            first = todo[0]
            self.recorder.steps_started(number, section, index, step.title, [first])
            await self.recorder.flush()
            done = await self._host_step(section, index, step, number, first)
        others = [h for h in todo if done is None or h != done.host]
        if others:
            self.recorder.steps_started(number, section, index, step.title, others)
        for host in others:
            where = done.host if done else "another host"
            self.finish(
                number,
                HostStepResult(
                    host,
                    section,
                    index,
                    step.title,
                    StepStatus.SKIPPED,
                    message=f"run_once: ran on {where}",
                ),
            )
            if step.register_as and done is not None:
                self.registered[host][step.register_as] = _registered(done)

    async def _host_step(
        self, section: str, index: int, step: StepBase, number: int, host: str
    ) -> HostStepResult:
        async with self.forks:
            result = await self._attempts(section, index, step, host)
        self.finish(number, result)
        return result

    def finish(self, number: int, result: HostStepResult) -> None:
        self.state.finished[(result.section, result.index, result.host)] = result
        self.recorder.step_finished(number, result)
        step = (self.book.steps if result.section == Section.STEPS else self.book.rollback)[
            result.index
        ]
        if step.register_as and result.status != StepStatus.SKIPPED:
            self.registered[result.host][step.register_as] = _registered(result)
        if result.failed and result.host not in self.failed:
            self.failed[result.host] = result.message or f"{result.name} failed"
            self.recorder.host_status(result.host, HostStatus.FAILED, self.failed[result.host])

    async def _attempts(
        self, section: str, index: int, step: StepBase, host: str
    ) -> HostStepResult:
        action = self.action_for(section, index, step, host)
        if isinstance(action, HostStepResult):
            return action
        names = self.names[host].extended(self.registered[host])
        base = HostStepResult(host, section, index, step.title, StepStatus.FAILED)
        context = HostContext(
            session=lambda: self.session(host),
            timeout=step.timeout or self.options.timeout,
            output_limit=self.options.output_limit,
            secrets=self.secrets,
            workspace=self.file.workspace,
            template_names=names,
            previous_release=lambda root: self.release_history(host, root),
            release_switched=lambda switch: self.recorder.release_switched(host, switch),
        )
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                skip = await action.skip_reason(context) if attempts == 1 else None
                if skip:
                    return _with(base, status=StepStatus.SKIPPED, message=skip, attempts=attempts)
                outcome = await action.run(context)
            except Unreachable as exc:
                return _with(
                    base,
                    status=StepStatus.UNREACHABLE,
                    message=str(exc),
                    attempts=attempts,
                    duration=time.monotonic() - started,
                )
            except HostKeyError as exc:
                return _with(
                    base, status=StepStatus.UNREACHABLE, message=str(exc), attempts=attempts
                )
            except (OSError, TemplateProblem, TimeoutError, ValueError) as exc:
                outcome = CommandResult(1, "", str(exc) or type(exc).__name__, 0.0)
            except RecordAltered:
                raise  # the record cannot vouch for what the step needs: stop the run (exit 4)
            except Exception as exc:
                outcome = CommandResult(1, "", f"internal error: {type(exc).__name__}: {exc}", 0.0)
            if outcome.ok or attempts > step.retries or self.stopping:
                break
            await asyncio.sleep(step.delay if step.delay is not None else 1.0)
        return self._result(base, outcome, attempts, time.monotonic() - started, step)

    def _result(
        self,
        base: HostStepResult,
        outcome: CommandResult,
        attempts: int,
        duration: float,
        step: StepBase,
    ) -> HostStepResult:
        if outcome.ok:
            status, message = StepStatus.OK, ""
        elif outcome.timed_out:
            status = StepStatus.TIMEOUT
            message = f"timed out after {step.timeout or self.options.timeout:g}s"
        else:
            status = StepStatus.FAILED
            detail = outcome.stderr.strip().splitlines()[-1:] if outcome.stderr.strip() else []
            message = f"exit {outcome.rc}" + (f": {detail[0]}" if detail else "")
        return _with(
            base,
            status=status,
            rc=outcome.rc,
            stdout=self.mask(outcome.stdout),
            stderr=self.mask(outcome.stderr),
            message=self.mask(message),
            duration=duration,
            attempts=attempts,
            output_bytes=outcome.output_bytes,
            output_sha256=outcome.output_sha256,
            ignored=status != StepStatus.OK and step.ignore_errors,
        )

    def action_for(
        self, section: str, index: int, step: StepBase, host: str
    ) -> StepBase | HostStepResult:
        """The step as the plan rendered it for `host`, or the result that it does not run
        there: skipped (its `when` is false) or failed (it cannot be rendered). Only what
        needs a registered result is decided or rendered now."""
        planned = self.planned[(section, index)].hosts[host]
        base = HostStepResult(host, section, index, step.title, StepStatus.FAILED)
        skipped = _with(base, status=StepStatus.SKIPPED, message=f"when {step.when!r} is false")
        if planned.step is None and not planned.render_at_run_time:
            return skipped
        if not (planned.when_at_run_time or planned.render_at_run_time):
            return planned.step or skipped
        names = self.names[host].extended(self.registered[host])
        try:
            if planned.when_at_run_time and step.when and not evaluate(step.when, names):
                return skipped
            if planned.step is not None:
                return planned.step
            problems: list[str] = []
            action = render_action(step, names, lambda path, msg: problems.append(msg))
        except TemplateProblem as exc:
            return _with(base, message=str(exc))
        return action if action is not None else _with(base, message="; ".join(problems))

    # --- gates ------------------------------------------------------------------------------

    async def _gate(self, key: str, wait: float | None, approve: str | None) -> str | None:
        await self.recorder.flush()
        known = self.state.gates.get(key)
        if known and known["status"] in ("approved", "done"):
            return None
        if known and known["status"] == "rejected":
            return RunStatus.REJECTED
        if wait is not None:
            self.recorder.gate(key, "wait", f"wait {wait:g}s", "waiting")
            await self._sleep(wait)
            if self.stopping:
                return RunStatus.INTERRUPTED
            self.recorder.gate(key, "wait", f"wait {wait:g}s", "done")
            return None
        message = approve or "Continue?"
        self.recorder.gate(key, "approve", message, "waiting")
        answer = await self.approver(message) if self.approver else None
        if answer is None:
            return RunStatus.AWAITING_APPROVAL
        approved, comment = answer
        status = "approved" if approved else "rejected"
        self.recorder.gate(key, "approve", message, status, self.operator, comment)
        self.state.gates[key] = {"status": status}
        return None if approved else RunStatus.REJECTED

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, deadline - time.monotonic()))

    # --- helpers ----------------------------------------------------------------------------

    async def session(self, host: str) -> Session:
        if host not in self.sessions:
            self.sessions[host] = asyncio.ensure_future(self.connect(self.hosts[host], self.ssh))
        return await asyncio.shield(self.sessions[host])

    async def _close(self) -> None:
        opened = [f for f in self.sessions.values() if f.done() and not f.exception()]
        await asyncio.gather(*(f.result().close() for f in opened), return_exceptions=True)
        for future in self.sessions.values():
            if not future.done():
                future.cancel()

    def mask(self, text: str) -> str:
        return self.secrets.text(text)

    def _restore_registered(self) -> None:
        for (section, index, host), result in self.state.finished.items():
            steps = self.book.steps if section == Section.STEPS else self.book.rollback
            name = steps[index].register_as if index < len(steps) else None
            if name and result.status != StepStatus.SKIPPED:
                self.registered[host][name] = _registered(result)


def _with(base: HostStepResult, **changes: Any) -> HostStepResult:
    return replace(base, **changes)


def _registered(result: HostStepResult) -> dict[str, Any]:
    """What `register:` makes available to later steps' templates. As in Ansible, stdout and
    stderr lose their final line break."""
    return {
        "stdout": result.stdout.rstrip("\r\n"),
        "stderr": result.stderr.rstrip("\r\n"),
        "rc": result.rc,
        "status": result.status,
        "failed": result.status in STEP_FAILED,
        StepStatus.SKIPPED: result.status == StepStatus.SKIPPED,
        "stdout_lines": result.stdout.splitlines(),
    }
