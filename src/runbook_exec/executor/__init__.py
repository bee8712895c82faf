"""Carries a plan out: batch by batch, each step on the batch's hosts at once, with retries,
timeouts, the failure policy, gates and rollback.

Everything it does goes to one `EventSink` before it goes on, so a run killed at any point can
be resumed from the store: host-steps that finished are not run again. Where the run stands
is kept by `Progress` (no I/O); what the executor is given is one `RunContext`; it is
stopped through a `Cancellation`, and it reaches hosts through the context's `connect`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..ansiblecfg import ansible_defaults
from ..errors import HostKeyError
from ..events import (
    NOTHING_TO_UNDO,
    EventSink,
    HostStatus,
    HostStepResult,
    RunStatus,
    Section,
    StepStatus,
)
from ..inventory import Host
from ..masking import MASK
from ..params import ResolvedParams
from ..plan import Plan, render_action
from ..record.values import RecordAltered
from ..runbook import RunbookFile
from ..steps import HostContext, Scope, StepBase
from ..templating import HostVars, TemplateProblem, evaluate
from ..transports.base import CommandResult, Session, Unreachable, default_known_hosts
from ..transports.guard import Mark
from ..transports.ssh import SshOptions, connect
from .ansible import AnsibleStep
from .gates import Gates
from .progress import Cancellation, Progress, RunState, retrying

__all__ = ["Approver", "Cancellation", "Connect", "Executor", "RunContext", "RunOptions"]
__all__ += ["RunState"]

Approver = Callable[[str], Awaitable[tuple[bool, str | None] | None]]
Connect = Callable[[Host, SshOptions], Awaitable[Session]]
"""Opens a session to a host: SSH's `connect`, or another transport."""


@dataclass
class RunOptions:
    forks: int = 50
    timeout: float = 600.0
    connect_timeout: float = 10.0
    output_limit: int = 64 * 1024
    known_hosts: Path = field(default_factory=default_known_hosts)
    accept_new_host_keys: bool = False
    # For sudo (-K, RUNBOOK_EXEC_BECOME_PASSWORD, ansible.cfg's become_password_file): never
    # recorded, so a resume is given it again.
    become_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RunContext:
    """Everything a run's executor is given: which run, what to carry out, where, and how."""

    run_id: str
    operator: str
    runbook_file: RunbookFile
    hosts: Sequence[Host]
    plan: Plan
    params: ResolvedParams
    options: RunOptions
    inventory: Sequence[str] = ()  # the sources, for playbook and module steps
    release_history: Callable[[str, str], str | None] = lambda host, root: None
    # (host, root, run id or "last", force) -> what a release step's `undo` puts back there
    undo_target: Callable[[str, str, str, bool], tuple[str | None, str]] = (
        lambda host, root, run, force: (None, "no record of releases to undo")
    )
    connect: Connect = connect


class Executor:
    def __init__(
        self,
        context: RunContext,
        recorder: EventSink,
        state: RunState | None = None,
        approver: Approver | None = None,
        cancel: Cancellation | None = None,
    ) -> None:
        self.context = context
        self.operator = context.operator
        self.file = context.runbook_file
        self.book = context.runbook_file.runbook
        self.hosts = {h.name: h for h in context.hosts}
        self.batches = [list(b) for b in context.plan.batches]
        self.planned = {
            (s.section, s.index): s for s in (*context.plan.steps, *context.plan.rollback)
        }
        # The gates after each batch (the same after every batch), as the plan rendered them.
        self.between = [
            (g.wait, g.approve, g.analysis) for g in context.plan.gates if g.after_batch == 1
        ]
        self.options = context.options
        self.recorder = recorder
        self.approver = approver
        self.cancel = cancel or Cancellation()
        state = state or RunState()
        self.progress = Progress(list(self.hosts), self.book.steps, self.book.rollback, state)
        self.roll_back = state.roll_back
        self.sessions: dict[str, asyncio.Future[Session]] = {}
        self.forks = asyncio.Semaphore(max(1, context.options.forks))
        passwords = [context.options.become_password, *(h.become_password for h in context.hosts)]
        self.secrets = context.params.secrets.adding(p for p in passwords if p)
        self.ssh = SshOptions(
            context.options.known_hosts,
            context.options.accept_new_host_keys,
            context.options.connect_timeout,
            context.options.output_limit,
            self.secrets,
            ansible_defaults(),
            context.options.become_password,
        )
        base = {**context.params.values, "run": {"id": context.run_id, "operator": self.operator}}
        self.base_names = base
        # For what is shown of a rendered value: each secret as the mask, so that what a
        # template makes of one (`{{ token | upper }}`) shows masked too.
        hidden = {name: MASK for name in context.params.secret_names}
        self.masked_names = {**base, **hidden}
        self.names = {h.name: HostVars(h.template_vars(), base) for h in context.hosts}
        self.ansible = AnsibleStep(self)
        self.gates = Gates(self)

    @property
    def stopping(self) -> bool:
        return self.cancel.stopping

    # --- the run ----------------------------------------------------------------------------

    async def execute(self) -> str:
        """Run to the end, or to a stop; returns the run's status."""
        try:
            if self.roll_back:
                status = await self._rollback(len(self.batches))
            else:
                status = await self._batches()
            await self.recorder.flush()
            return status
        finally:
            await self._close()

    async def _batches(self) -> str:
        policy = self.book.strategy
        progress = self.progress
        for number, batch in enumerate(self.batches, 1):
            if self.stopping:
                return RunStatus.INTERRUPTED
            if progress.batch_done(batch, self._gate_keys(number)):
                continue
            self.recorder.batch_started(number, batch)
            for host in batch:
                if host not in progress.failed:
                    self.recorder.host_status(host, HostStatus.ACTIVE)
            outcome = await self._section(Section.STEPS, self.book.steps, number, batch)
            if outcome:
                return await self._ended(outcome, number)
            if self.stopping:
                return RunStatus.INTERRUPTED
            breached = progress.failed_share(batch) > policy.max_fail_percentage
            for host in batch:
                if host not in progress.failed:
                    complete = progress.complete(host)
                    self.recorder.host_status(
                        host,
                        HostStatus.OK if complete else HostStatus.STOPPED,
                        None if complete else "the batch stopped early",
                    )
            if breached and self.book.on_failure != "continue":
                return await self._stop(number)
            if number < len(self.batches):
                batch_names = self.batch_names(number, batch)
                for index, (wait, approve, analysis) in enumerate(self.between):
                    key = f"after:{number}:{index}"
                    outcome = await self.gates.gate(key, wait, approve, analysis, batch_names)
                    if outcome:
                        return await self._ended(outcome, number)
        return RunStatus.FAILED if progress.failed else RunStatus.SUCCEEDED

    def _gate_keys(self, number: int) -> list[str]:
        last = number == len(self.batches)
        return [] if last else [f"after:{number}:{i}" for i in range(len(self.between))]

    async def _ended(self, outcome: str, number: int) -> str:
        """A gate's rejection, or a failed analysis between batches, goes through
        `on_failure` as a failed batch does: with rollback, the rollback steps run on every
        host this run changed."""
        rollback = self.book.on_failure == "rollback" and self.progress.touched()
        if outcome in (RunStatus.REJECTED, RunStatus.FAILED) and rollback:
            why = "rejected" if outcome == RunStatus.REJECTED else "the analysis failed"
            self.recorder.note(f"{why}: rolling back the hosts this run changed")
            return await self._rollback(number)
        return outcome

    def batch_names(self, number: int, hosts: Sequence[str]) -> dict[str, Any]:
        """What a batch's gates and analyses may name: `batch_number`, `batch_hosts` (its
        hosts still in the run) and `baseline_hosts` (the run's hosts not changed yet:
        those of the batches after it)."""
        later = [h for b in self.batches[number:] for h in b if h not in self.progress.failed]
        return {
            "batch_number": number,
            "batch_hosts": [h for h in hosts if h not in self.progress.failed],
            "baseline_hosts": later,
        }

    async def _stop(self, number: int) -> str:
        names = ", ".join(h for h in self.batches[number - 1] if h in self.progress.failed)
        self.recorder.note(f"batch {number} failed on {names}: no further batch starts")
        if self.book.on_failure == "rollback":
            return await self._rollback(number)
        return RunStatus.FAILED

    async def _rollback(self, up_to: int) -> str:
        """The rollback steps on every host this run changed, newest batch first."""
        touched = self.progress.touched()
        failed = self.progress.failed
        failures = False
        for number in range(up_to, 0, -1):
            hosts = [h for h in self.batches[number - 1] if h in touched]
            if not hosts:
                continue
            self.recorder.note(f"rolling back batch {number}: {', '.join(hosts)}")
            for host in hosts:
                failed.pop(host, None)
            outcome = await self._section(Section.ROLLBACK, self.book.rollback, number, hosts)
            if outcome:
                return outcome
            for host in hosts:
                failures |= host in failed
                if host in failed:
                    self.recorder.host_status(host, HostStatus.ROLLBACK_FAILED)
                elif self._undid_nothing(host):
                    self.recorder.host_status(host, HostStatus.ROLLED_BACK, NOTHING_TO_UNDO)
                else:
                    self.recorder.host_status(host, HostStatus.ROLLED_BACK)
        return RunStatus.ROLLBACK_FAILED if failures else RunStatus.ROLLED_BACK

    def _undid_nothing(self, host: str) -> bool:
        """Every rollback step was skipped on `host` (say, the release it would put back
        was never switched there): it is back as it was, but not by anything done now."""
        finished = self.progress.finished
        results = [
            finished.get((Section.ROLLBACK, i, host)) for i in range(len(self.book.rollback))
        ]
        return all(r is not None and r.status == StepStatus.SKIPPED for r in results)

    async def _section(
        self, section: str, steps: Sequence[StepBase], number: int, batch: Sequence[str]
    ) -> str | None:
        """Run `steps` on the batch's live hosts; a non-None result ends the run with it."""
        policy = self.book.strategy
        for index, step in enumerate(steps):
            if self.stopping:
                return RunStatus.INTERRUPTED
            live = [h for h in batch if h not in self.progress.failed]
            if not live:
                return None
            if step.scope is Scope.BATCH:
                outcome = await self.gates.step(section, index, step, number, live)
                if outcome:
                    return outcome
                continue
            await self._step(section, index, step, number, live)
            breached = self.progress.failed_share(batch) > policy.max_fail_percentage
            if section == Section.STEPS and breached and self.book.on_failure != "continue":
                return None  # the batch stops here, as Ansible's does; the caller applies policy
        return None

    async def _step(
        self, section: str, index: int, step: StepBase, number: int, live: Sequence[str]
    ) -> None:
        todo = [h for h in live if not self.progress.done(section, index, h)]
        if step.run_once:
            await self._run_once(section, index, step, number, todo)
            return
        if not todo:
            return
        self.recorder.steps_started(number, section, index, step.title, todo)
        await self.recorder.flush()  # recorded as started before any host begins it
        if step.scope is Scope.HOSTS:
            await self.ansible.run(section, index, step, number, todo)
            return
        await asyncio.gather(*(self._host_step(section, index, step, number, h) for h in todo))

    async def _run_once(
        self, section: str, index: int, step: StepBase, number: int, todo: Sequence[str]
    ) -> None:
        """Once per run: on the first live host of the first batch that reaches the step."""
        done = self.progress.ran_once(section, index)
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
            message = f"run_once: ran on {where}"
            base = HostStepResult(host, section, index, step.title, StepStatus.SKIPPED)
            self.finish(number, replace(base, message=message))
            if done is not None:
                self.progress.share((section, index), host, done)

    async def _host_step(
        self, section: str, index: int, step: StepBase, number: int, host: str
    ) -> HostStepResult:
        async with self.forks:
            result = await self._attempts(section, index, step, host)
        self.finish(number, result)
        return result

    def finish(self, number: int, result: HostStepResult) -> None:
        self.recorder.step_finished(number, result)
        why = self.progress.finish(result)
        if why is not None:
            self.recorder.host_status(result.host, HostStatus.FAILED, why)

    def action_for(
        self,
        section: str,
        index: int,
        step: StepBase,
        host: str,
        planned_as: str | None = None,
        batch: Mapping[str, Any] | None = None,
    ) -> StepBase | HostStepResult:
        """The step as the plan rendered it for `host`, or the result that it does not run
        there: skipped (its `when` is false) or failed (it cannot be rendered). Only what
        needs a registered result is decided or rendered now, with `host`'s results.
        (`planned_as`: the plan's key for the step when not the host's, "*" for a gate;
        `batch`: a gate's batch names, which a gate's templates may read.)"""
        planned = self.planned[(section, index)].hosts[planned_as or host]
        base = HostStepResult(host, section, index, step.title, StepStatus.FAILED)
        skipped = replace(base, status=StepStatus.SKIPPED, message=f"when {step.when!r} is false")
        if planned.step is None and not planned.render_at_run_time:
            return skipped
        if not (planned.when_at_run_time or planned.render_at_run_time):
            return planned.step or skipped
        names = self.names_of(host).extended(batch or {})
        try:
            if planned.when_at_run_time and step.when and not evaluate(step.when, names):
                return skipped
            if planned.step is not None:
                return planned.step
            problems: list[str] = []
            action = render_action(step, names, lambda path, msg: problems.append(msg))
        except TemplateProblem as exc:
            return replace(base, message=str(exc))
        return action if action is not None else replace(base, message="; ".join(problems))

    def names_of(self, host: str) -> HostVars:
        """The host's template names with what it has registered so far."""
        return self.names[host].extended(self.progress.registered.get(host, {}))

    def host_context(self, host: str, step: StepBase) -> HostContext:
        return HostContext(
            session=lambda: self.session(host),
            timeout=step.timeout or self.options.timeout,
            output_limit=self.options.output_limit,
            secrets=self.secrets,
            workspace=self.file.workspace,
            template_names=self.names_of(host),
            previous_release=lambda root: self.context.release_history(host, root),
            undo_target=lambda root, run, force: self.context.undo_target(host, root, run, force),
            release_switched=lambda switch: self.recorder.release_switched(host, switch),
        )

    async def _attempts(
        self, section: str, index: int, step: StepBase, host: str
    ) -> HostStepResult:
        action = self.action_for(section, index, step, host)
        if isinstance(action, HostStepResult):
            return action
        base = HostStepResult(host, section, index, step.title, StepStatus.FAILED)
        context = self.host_context(host, step)
        started = time.monotonic()

        async def attempt(number: int) -> CommandResult | HostStepResult:
            marked = replace(context, mark=Mark(self.context.run_id, f"{section}.{index}", number))
            try:
                skip = await action.skip_reason(marked) if number == 1 else None
                if skip:
                    return replace(base, status=StepStatus.SKIPPED, message=skip, attempts=1)
                return await action.run(marked)
            except Unreachable as exc:
                return replace(
                    base,
                    status=StepStatus.UNREACHABLE,
                    message=str(exc),
                    attempts=number,
                    duration=time.monotonic() - started,
                )
            except HostKeyError as exc:
                return replace(
                    base, status=StepStatus.UNREACHABLE, message=str(exc), attempts=number
                )
            except (OSError, TemplateProblem, TimeoutError, ValueError) as exc:
                return CommandResult(1, "", str(exc) or type(exc).__name__, 0.0)
            except RecordAltered:
                raise  # the record cannot vouch for what the step needs: stop the run (exit 4)
            except Exception as exc:
                return CommandResult(1, "", f"internal error: {type(exc).__name__}: {exc}", 0.0)

        def again(outcome: CommandResult | HostStepResult, number: int) -> bool:
            if isinstance(outcome, HostStepResult) or outcome.ok:
                return False
            return number <= step.retries and not self.stopping

        delay = step.delay if step.delay is not None else 1.0
        outcome, attempts = await retrying(attempt, again, delay)
        if isinstance(outcome, HostStepResult):
            return outcome
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
        return replace(
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

    # --- sessions ---------------------------------------------------------------------------

    async def session(self, host: str) -> Session:
        if host not in self.sessions:
            opening = self.context.connect(self.hosts[host], self.ssh)
            self.sessions[host] = asyncio.ensure_future(opening)
        return await asyncio.shield(self.sessions[host])

    async def _close(self) -> None:
        opened = [f for f in self.sessions.values() if f.done() and not f.exception()]
        await asyncio.gather(*(f.result().close() for f in opened), return_exceptions=True)
        for future in self.sessions.values():
            if not future.done():
                future.cancel()

    def mask(self, text: str) -> str:
        return self.secrets.text(text)
