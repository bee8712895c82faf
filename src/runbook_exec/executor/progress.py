"""Where a run stands, without any I/O: which host-steps finished and how, which hosts
failed, what each host registered. The executor asks it and tells it; nothing else writes
it. Also the cancellation a run is given, and the retry loop both step paths share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from ..events import HOST_FAILED, STEP_FAILED, HostStepResult, Section, StepStatus
from ..steps import StepBase

if TYPE_CHECKING:
    from ..record.values import RunDetails

T = TypeVar("T")
PASSED = frozenset({"approved", "done", "passed"})  # a gate that no longer holds the run


@dataclass
class RunState:
    """What is known about a run before the executor starts (empty for a new run)."""

    finished: dict[tuple[str, int, str], HostStepResult] = field(default_factory=dict)
    host_status: dict[str, str] = field(default_factory=dict)
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    roll_back: bool = False
    """Carry out only the rollback, on the hosts the run changed (a run cancelled with
    `--rollback`)."""
    registered: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Results registered before this run, by host: a run that undoes another starts with
    what that one registered, as its own rollback would have."""
    unfinished: frozenset[str] = frozenset()
    """Hosts where a step started and never finished (the controller died): it may have
    changed them, so a rollback counts them as changed."""

    @classmethod
    def of(cls, details: RunDetails) -> RunState:
        """Where a recorded run stands, from its verified record: a host-step that started
        and never finished is not finished (it runs again)."""
        finished = {
            step.key: HostStepResult(
                step.host,
                step.section,
                step.index,
                step.name,
                StepStatus(step.status),
                step.rc,
                step.stdout or "",
                step.stderr or "",
                step.message,
                attempts=step.attempts,
                ignored=step.ignored,
            )
            for step in details.steps
            if step.status != "running"
        }
        hosts = {host.host: host.status for host in details.hosts}
        gates = {gate.key: {"status": gate.status} for gate in details.gates}
        unfinished = frozenset(
            s.host for s in details.steps if s.status == "running" and s.section == Section.STEPS
        )
        return cls(finished, hosts, gates, unfinished=unfinished)


class Cancellation:
    """Asked by the executor, requested from outside (a signal handler): the first request
    starts no new work, the second stops the run at once (its commands are ended on their
    hosts when the connections close)."""

    def __init__(self) -> None:
        self.requests = 0

    def request(self) -> int:
        self.requests += 1
        return self.requests

    @property
    def stopping(self) -> bool:
        return self.requests >= 1

    @property
    def abandoning(self) -> bool:
        return self.requests >= 2


class Progress:
    """The run's host-steps, failures and registered results, as the executor reports them."""

    def __init__(
        self,
        hosts: Sequence[str],
        steps: Sequence[StepBase],
        rollback: Sequence[StepBase],
        state: RunState,
    ) -> None:
        self.sections = {Section.STEPS: steps, Section.ROLLBACK: rollback}
        self.finished = dict(state.finished)
        self.gates = dict(state.gates)
        self.failed: dict[str, str] = {
            h: s for h, s in state.host_status.items() if s in HOST_FAILED
        }
        self.unfinished = state.unfinished
        self.registered: dict[str, dict[str, Any]] = {
            h: dict(state.registered.get(h, {})) for h in hosts
        }
        for (section, index, host), result in self.finished.items():
            steps_of = self.sections[Section(section)]
            if index >= len(steps_of):
                continue
            self._register(steps_of[index], result)
            once = steps_of[index].run_once and result.status == StepStatus.SKIPPED
            if once and (ran := self.ran_once(section, index)) is not None:
                self.share((section, index), host, ran)  # as when the run went past it

    def finish(self, result: HostStepResult) -> str | None:
        """Take a host-step's result; returns why the host failed, if it fails with it."""
        self.finished[(result.section, result.index, result.host)] = result
        self._register(self.sections[Section(result.section)][result.index], result)
        if result.failed and result.host not in self.failed:
            self.failed[result.host] = result.message or f"{result.name} failed"
            return self.failed[result.host]
        return None

    def share(self, key: tuple[str, int], host: str, result: HostStepResult) -> None:
        """A run_once step's result becomes `host`'s registered value too."""
        self._register(self.sections[Section(key[0])][key[1]], replace(result, host=host))

    def _register(self, step: StepBase, result: HostStepResult) -> None:
        """As in Ansible, a skipped step registers too (`x.skipped` is true), so a later
        step can ask whether it ran."""
        if step.register_as:
            self.registered.setdefault(result.host, {})[step.register_as] = registered(result)

    def done(self, section: str, index: int, host: str) -> bool:
        return (section, index, host) in self.finished

    def failed_share(self, batch: Sequence[str]) -> float:
        return 100.0 * sum(1 for h in batch if h in self.failed) / max(len(batch), 1)

    def complete(self, host: str) -> bool:
        """The host finished the last step."""
        return self.done(Section.STEPS, len(self.sections[Section.STEPS]) - 1, host)

    def batch_done(self, batch: Sequence[str], gate_keys: Sequence[str]) -> bool:
        """On resume: every host of the batch finished or dropped out, its gates passed."""
        hosts = all(h in self.failed or self.complete(h) for h in batch)
        return hosts and all(self.gates.get(k, {}).get("status") in PASSED for k in gate_keys)

    def touched(self) -> set[str]:
        """The hosts a step of this run changed (ran on, not skipped, or started and never
        finished, so perhaps changed): rollback's hosts."""
        return {
            host
            for (section, _, host), r in self.finished.items()
            if section == Section.STEPS and r.status != StepStatus.SKIPPED
        } | self.unfinished

    def ran_once(self, section: str, index: int) -> HostStepResult | None:
        """Where a run_once step ran (not skipped), if it did."""
        return next(
            (
                r
                for (s, i, _), r in self.finished.items()
                if s == section and i == index and r.status != StepStatus.SKIPPED
            ),
            None,
        )


def registered(result: HostStepResult) -> dict[str, Any]:
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


async def retrying(
    attempt: Callable[[int], Awaitable[T]],
    again: Callable[[T, int], bool],
    delay: float,
) -> tuple[T, int]:
    """Call `attempt(n)` for n = 1, 2, … while `again(outcome, n)` says so, `delay` seconds
    apart; returns the last outcome and the number of attempts."""
    attempts = 0
    while True:
        attempts += 1
        outcome = await attempt(attempts)
        if not again(outcome, attempts):
            return outcome, attempts
        await asyncio.sleep(delay)
