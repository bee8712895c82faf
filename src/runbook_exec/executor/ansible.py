"""The executor's Ansible path: a `playbook:` or `module:` step is one ansible-playbook run
on the batch's hosts that have not finished it (not one per host), retried on the hosts that
failed, and each host's outcome turned into an ordinary host-step result."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import HostKeyError
from ..events import HostStepResult, StepStatus, TaskResult
from ..steps import StepBase
from ..transports.ansible import AnsibleSettings, PlaybookOutcome, run_playbook
from ..transports.base import Unreachable
from .progress import retrying

if TYPE_CHECKING:
    from . import Executor


class AnsibleStep:
    """Runs playbook and module steps for one executor, reporting through it."""

    def __init__(self, executor: Executor) -> None:
        self.ex = executor

    async def run(
        self, section: str, index: int, step: StepBase, number: int, todo: Sequence[str]
    ) -> None:
        """A playbook or module step: one ansible-playbook run on the batch's hosts that have
        not finished it, then each host's outcome as an ordinary host-step result."""
        actions: dict[str, StepBase] = {}
        for host in todo:
            action = self.ex.action_for(section, index, step, host)
            if isinstance(action, HostStepResult):
                self.ex.finish(number, action)
            else:
                actions[host] = action
        shared = {ansible_call_key(a) for a in actions.values()}
        if len(shared) > 1:
            why = PER_HOST_ARGS
            for host in actions:
                self.ex.finish(
                    number,
                    HostStepResult(
                        host, section, index, step.title, StepStatus.FAILED, message=why
                    ),
                )
            return
        remaining = [
            h
            for h in actions
            if not await self._guarded(number, section, index, step, h, actions[h])
        ]
        if not remaining:
            return
        started = time.monotonic()

        async def attempt(count: int) -> list[str]:
            """One ansible-playbook run on the hosts still to do; the hosts it failed on."""
            nonlocal remaining
            outcome = await self._playbook(
                step, actions[remaining[0]], remaining, number, section, index
            )
            failed = [h for h in remaining if outcome.hosts[h] != StepStatus.OK]
            retry = again(failed, count)
            for host in remaining:
                if host in failed and retry:
                    continue
                duration = time.monotonic() - started
                result = self._result(host, section, index, step, outcome, count, duration)
                self.ex.finish(number, result)
            remaining = failed
            return failed

        def again(failed: list[str], count: int) -> bool:
            return bool(failed) and count <= step.retries and not self.ex.stopping

        await retrying(attempt, again, step.delay if step.delay is not None else 1.0)

    async def _guarded(
        self,
        number: int,
        section: str,
        index: int,
        step: StepBase,
        host: str,
        action: StepBase,
    ) -> bool:
        """Finish the step as skipped on `host` when its creates/unless guard says so."""
        if not (action.creates or action.unless):
            return False
        context = self.ex.host_context(host, step)
        try:
            reason = await action.skip_reason(context)
        except (Unreachable, HostKeyError) as exc:
            self.ex.finish(
                number,
                HostStepResult(
                    host, section, index, step.title, StepStatus.UNREACHABLE, message=str(exc)
                ),
            )
            return True
        if reason:
            self.ex.finish(
                number,
                HostStepResult(
                    host, section, index, step.title, StepStatus.SKIPPED, message=reason
                ),
            )
        return reason is not None

    async def _playbook(
        self,
        step: StepBase,
        action: StepBase,
        hosts: Sequence[str],
        number: int,
        section: str,
        index: int,
    ) -> PlaybookOutcome:
        settings = AnsibleSettings(
            self.ex.options.known_hosts,
            self.ex.options.accept_new_host_keys,
            self.ex.options.forks,
            step.timeout or self.ex.options.timeout,
            self.ex.secrets,
            self.ex.options.become_password,
        )

        def on_task(result: TaskResult) -> None:
            masked = replace(
                result, message=self.ex.mask(result.message), result=self.ex.mask(result.result)
            )
            self.ex.recorder.task_result(number, section, index, masked)

        playbook, options = action.ansible_call(self.ex.file.workspace)
        return await run_playbook(
            playbook,
            self.ex.context.inventory,
            hosts,
            settings,
            on_task=on_task,
            should_cancel=lambda: self.ex.cancel.abandoning,
            **options,
        )

    def _result(
        self,
        host: str,
        section: str,
        index: int,
        step: StepBase,
        outcome: PlaybookOutcome,
        attempts: int,
        duration: float,
    ) -> HostStepResult:
        status = StepStatus(outcome.hosts[host])
        tasks = outcome.tasks.get(host, [])
        summary = "\n".join(
            f"{t.status}: {t.task}"
            + (f" — {t.message}" if t.message and t.status in ("failed", "unreachable") else "")
            for t in tasks
        )
        changed = sum(1 for t in tasks if t.status == "changed")
        message = (
            outcome.messages.get(host, "").removeprefix(f"{step.title}: ")  # said once
            if status != StepStatus.OK
            else (f"{len(tasks)} tasks, {changed} changed")
        )
        return HostStepResult(
            host,
            section,
            index,
            step.title,
            status,
            rc=0 if status == StepStatus.OK else (outcome.rc or 2),
            stdout=self.ex.mask(summary),
            message=self.ex.mask(message),
            duration=duration,
            attempts=attempts,
            ignored=status != StepStatus.OK and step.ignore_errors,
        )


PER_HOST_ARGS = (
    "renders differently on different hosts, but Ansible takes one set of vars and args per "
    "run: put host-specific values in the inventory or the playbook, or wrap them in "
    "{% raw %}…{% endraw %} so that Ansible templates them per host"
)


def ansible_call_key(step: StepBase) -> str:
    """What must be the same on every host of one ansible-playbook run (not `creates` or
    `unless`, which are checked per host)."""
    return json.dumps(_ansible_fields(step.action()), sort_keys=True, default=str)


def _ansible_fields(action: Mapping[str, Any]) -> dict[str, Any]:
    """What goes to Ansible once for all hosts (the per-host guards do not)."""
    return {k: v for k, v in action.items() if k not in ("creates", "unless")}
