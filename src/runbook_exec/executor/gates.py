"""The executor's gates: `wait:`, `approve:` and `analysis:` (as steps, once per batch, or
between batches), each recorded as waiting and then done, approved or rejected, passed or
failed. An analysis step's verdict is every live host's result in its batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..analysis import Measurement, Outcome, Verdict, analyse
from ..events import HostStepResult, RunStatus, StepStatus
from ..steps import StepBase
from ..steps.analysis import AnalysisSpec, AnalysisStep
from ..templating import HostVars, TemplateProblem, evaluate, render, render_data
from .progress import PASSED

if TYPE_CHECKING:
    from . import Executor


class Gates:
    """Holds one executor's batches at its gates, reporting through it."""

    def __init__(self, executor: Executor) -> None:
        self.ex = executor

    async def step(
        self, section: str, index: int, step: StepBase, number: int, live: Sequence[str]
    ) -> str | None:
        """A `wait:` or `approve:` step: once for the batch, as planned; what it needs at run
        time (a `when` or a field that reads a registered result) is decided with the
        batch's first live host's results. Skipped when its `when` is false; a gate that
        cannot be rendered fails the batch's hosts."""
        batch = self.ex.batch_names(number, live)
        if isinstance(step, AnalysisStep):
            return await self.analysis_step(section, index, step, number, live, batch)
        action = self.ex.action_for(section, index, step, live[0], planned_as="*", batch=batch)
        if isinstance(action, HostStepResult):
            if action.status == StepStatus.SKIPPED:
                self.ex.recorder.note(f"{step.title}: skipped ({action.message})")
                return None
            for host in live:
                self.ex.finish(number, replace(action, host=host))
            return None
        wait = getattr(action, "wait", None)
        approve = getattr(action, "approve", None)
        return await self.gate(
            f"{section}:{number}:{index}",
            float(wait) if wait is not None else None,
            self.ex.mask(approve) if approve is not None else None,
        )

    async def gate(
        self,
        key: str,
        wait: float | None,
        approve: str | None,
        analysis: Mapping[str, Any] | None = None,
        batch: Mapping[str, Any] | None = None,
    ) -> str | None:
        await self.ex.recorder.flush()
        known = self.ex.progress.gates.get(key)
        if known and known["status"] in PASSED:
            return None
        if known and known["status"] == "rejected":
            return RunStatus.REJECTED
        if known and known["status"] == "failed":
            return RunStatus.FAILED
        if analysis is not None:
            return await self.analysis_gate(key, analysis, batch or {})
        if wait is not None:
            self.ex.recorder.gate(key, "wait", f"wait {wait:g}s", "waiting")
            await self.sleep(wait)
            if self.ex.stopping:
                return RunStatus.INTERRUPTED
            self.ex.recorder.gate(key, "wait", f"wait {wait:g}s", "done")
            return None
        approved = await self.ask(key, approve or "Continue?")
        if isinstance(approved, str):
            return approved
        return None if approved else RunStatus.REJECTED

    async def ask(self, key: str, message: str) -> bool | str:
        """A person's yes or no at gate `key`, recorded as waiting then decided; or the run
        status to stop with while the decision is still to come."""
        self.ex.recorder.gate(key, "approve", message, "waiting")
        answer = await self.ex.approver(message) if self.ex.approver else None
        if answer is None:
            return RunStatus.AWAITING_APPROVAL
        approved, comment = answer
        status = "approved" if approved else "rejected"
        self.ex.recorder.gate(key, "approve", message, status, self.ex.operator, comment)
        self.ex.progress.gates[key] = {"status": status}
        return approved

    async def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.ex.stopping and time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, deadline - time.monotonic()))

    async def _slept(self, seconds: float) -> bool:
        await self.sleep(seconds)
        return not self.ex.stopping

    # --- analysis ---------------------------------------------------------------------------

    async def analysis_step(
        self,
        section: str,
        index: int,
        step: AnalysisStep,
        number: int,
        live: Sequence[str],
        batch: Mapping[str, Any],
    ) -> str | None:
        """Measure the batch; the verdict becomes each live host's result for the step. An
        inconclusive one asks a person (`inconclusive: ask`), as an `approve:` does, under
        the step's gate key; on resume, a decision already made is not measured again."""
        todo = [h for h in live if not self.ex.progress.done(section, index, h)]
        if not todo:
            return None
        action = self.ex.action_for(section, index, step, live[0], planned_as="*", batch=batch)
        if isinstance(action, HostStepResult):
            if action.status == StepStatus.SKIPPED:
                self.ex.recorder.note(f"{step.title}: skipped ({action.message})")
                self.ex.recorder.steps_started(number, section, index, step.title, todo)
            for host in todo:
                self.ex.finish(number, replace(action, host=host))
            return None
        assert isinstance(action, AnalysisStep)
        key = f"{section}:{number}:{index}"
        where = {"step": {"section": section, "index": index, "name": step.title}}
        base = HostStepResult(todo[0], section, index, step.title, StepStatus.FAILED)
        decided = self.ex.progress.gates.get(key, {}).get("status")
        if decided in ("approved", "rejected"):
            outcome = Outcome(
                Verdict.SUCCESSFUL if decided == "approved" else Verdict.FAILED,
                f"inconclusive; {decided} by a person",
            )
        else:
            self.ex.recorder.steps_started(number, section, index, step.title, todo)
            await self.ex.recorder.flush()
            started = time.monotonic()
            raw = step.analysis.model_dump(mode="json", exclude_unset=True)
            outcome = await self._analyse(action.analysis, raw, number, where, batch, live[0])
            if self.ex.stopping:  # not a verdict: the step runs again when resumed
                return RunStatus.INTERRUPTED
            base = replace(base, duration=time.monotonic() - started)
            if outcome.verdict == Verdict.INCONCLUSIVE:
                asked = await self._inconclusive(key, action.analysis, outcome)
                if isinstance(asked, str):
                    return asked
                outcome = asked
        passed = outcome.verdict == Verdict.SUCCESSFUL
        result = replace(
            base,
            status=StepStatus.OK if passed else StepStatus.FAILED,
            rc=0 if passed else 1,
            stdout=self.ex.mask(outcome.table()),
            message=self.ex.mask(
                "" if passed else f"analysis {outcome.verdict}: {outcome.message}"
            ),
            attempts=1,
            ignored=not passed and step.ignore_errors,
        )
        for host in todo:
            self.ex.finish(number, replace(result, host=host))
        return None

    async def _inconclusive(self, key: str, spec: AnalysisSpec, outcome: Outcome) -> Outcome | str:
        """What an inconclusive analysis becomes: as `inconclusive:` says, or a person's
        answer (a run status when the run must wait for it)."""
        if spec.inconclusive == "pass":
            return replace(
                outcome,
                verdict=Verdict.SUCCESSFUL,
                message=f"{outcome.message}; passed as inconclusive: pass says",
            )
        if spec.inconclusive == "fail":
            return replace(outcome, verdict=Verdict.FAILED)
        message = self.ex.mask(f"Analysis inconclusive ({outcome.message}). Promote anyway?")
        approved = await self.ask(key, message)
        if isinstance(approved, str):
            return approved
        verdict = Verdict.SUCCESSFUL if approved else Verdict.FAILED
        status = "approved" if approved else "rejected"
        return replace(outcome, verdict=verdict, message=f"{outcome.message}; {status} by a person")

    async def analysis_gate(
        self, key: str, analysis: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> str | None:
        """An `analysis:` between batches, on the batch that just ended: passed, or failed
        (the run ends as a failed batch does, and `on_failure` applies)."""
        names = HostVars({}, self.ex.base_names).extended(batch)
        try:
            spec = AnalysisSpec.model_validate(
                render_data(dict(analysis), names), context={"rendered": True}
            )
        except (TemplateProblem, ValidationError):
            # Why, as the same rendering with each secret as the mask says it: the real
            # one's message may quote what a template made of a secret.
            try:
                masked = HostVars({}, self.ex.masked_names).extended(batch)
                AnalysisSpec.model_validate(
                    render_data(dict(analysis), masked), context={"rendered": True}
                )
                why = "cannot be rendered with the run's values"
            except (TemplateProblem, ValidationError) as problem:
                why = f"cannot be rendered: {problem}"
            self.ex.recorder.gate(key, "analysis", self.ex.mask(why), "failed")
            return RunStatus.FAILED
        shown = self._shown(str(analysis.get("query")), spec.query, batch, None)
        shown = f"analysis of batch {batch['batch_number']}: {shown}"
        self.ex.recorder.gate(key, "analysis", shown, "waiting")
        number = int(batch["batch_number"])
        outcome = await self._analyse(spec, analysis, number, {"gate": key}, batch, None)
        if self.ex.stopping:
            return RunStatus.INTERRUPTED
        if outcome.verdict == Verdict.INCONCLUSIVE:
            asked = await self._inconclusive(key, spec, outcome)
            if isinstance(asked, str):
                return asked
            outcome = asked
        passed = outcome.verdict == Verdict.SUCCESSFUL
        status = "passed" if passed else "failed"
        self.ex.recorder.gate(key, "analysis", self.ex.mask(outcome.message), status)
        self.ex.progress.gates[key] = {"status": status}
        return None if passed else RunStatus.FAILED

    def _shown(
        self, template: str, rendered: str, batch: Mapping[str, Any], host: str | None
    ) -> str:
        """A query as records show it: rendered again with each secret as the mask."""
        inventory = self.ex.hosts[host].template_vars() if host else {}
        registered = self.ex.progress.registered.get(host, {}) if host else {}
        names = HostVars(inventory, self.ex.masked_names).extended({**registered, **batch})
        try:
            return self.ex.mask(render(template, names))
        except TemplateProblem:
            return self.ex.mask(rendered)

    async def _analyse(
        self,
        spec: AnalysisSpec,
        raw: Mapping[str, Any],
        number: int,
        where: Mapping[str, Any],
        batch: Mapping[str, Any],
        host: str | None,
    ) -> Outcome:
        names = self.ex.names_of(host) if host else HostVars({}, self.ex.base_names)
        names = names.extended(batch)
        shown = {spec.query: self._shown(str(raw.get("query")), spec.query, batch, host)}
        if spec.compare is not None:
            template = str((raw.get("compare") or {}).get("baseline"))
            shown[spec.compare.baseline] = self._shown(template, spec.compare.baseline, batch, host)
        # What the masked rendering hides is secret, however a template changed it: hidden
        # too wherever it shows up (Prometheus quotes a bad query in its error).
        secrets = self.ex.secrets.adding(
            part for sent, seen in shown.items() for part in _hidden(sent, seen)
        )

        def judge(expression: str, value: Any) -> Any:
            return evaluate(expression, names.extended({"result": value}))

        async def measured(measurement: Measurement) -> None:
            event = measurement.as_event()
            event["query"] = shown.get(event["query"]) or self.ex.mask(event["query"])
            if isinstance(event.get("baseline"), dict) and "query" in event["baseline"]:
                query = event["baseline"]["query"]
                event["baseline"]["query"] = shown.get(query) or self.ex.mask(query)
            self.ex.recorder.measured(number, where, secrets.data(event))
            await self.ex.recorder.flush()

        baseline = None
        if spec.compare is not None and batch.get("baseline_hosts"):
            baseline = spec.compare.baseline
        outcome = await analyse(
            spec, spec.query, judge, measured, self._slept, baseline=baseline,
            stopping=lambda: self.ex.stopping,
        )  # fmt: skip
        measurements = [replace(m, message=secrets.text(m.message)) for m in outcome.measurements]
        return replace(outcome, message=secrets.text(outcome.message), measurements=measurements)


def _hidden(sent: str, shown: str) -> list[str]:
    """The parts of `sent` that its masked rendering `shown` does not have: what templates
    made of secrets (at least 3 characters; shorter ones would mask too much)."""
    import difflib

    parts = difflib.SequenceMatcher(None, sent, shown, autojunk=False).get_opcodes()
    return [sent[i1:i2] for tag, i1, i2, _, _ in parts if tag != "equal" and i2 - i1 >= 3]
