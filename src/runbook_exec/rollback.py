"""Undoing a recorded run: on exactly the hosts it switched, what was live before it, by
a new run of its runbook's rollback steps (and their health checks). Pure: a run's verified
record and the release history in, what to put back where (or why not) out.

    what = undo_plan(details, releases, force=False)
    what.restore        {"host1": {"/srv/app": "2.0.0"}}: host1 goes back to 2.0.0
    what.refused        ["host2: /srv/app was switched to 3.0.0 by run R since"]
    runbook_file = rollback_runbook(details.run, what)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import InputError, Problem, Refused
from .prepare import Prepared, prepare_file
from .record import RunDetails, RunRecord, SwitchRecord
from .resuming import registered_names, require_secrets
from .runbook import RunbookFile, runbook_from_text
from .templating import TemplateProblem, is_template, names_used


@dataclass(frozen=True)
class UndoPlan:
    """What undoing a run puts back where, and what stands in the way."""

    run_id: str
    restore: dict[str, dict[str, str]] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)  # "host1: /srv/app 3.0.0 → 2.0.0"
    refused: list[str] = field(default_factory=list)  # a host changed since, by name
    settled: list[str] = field(default_factory=list)  # already on what was live before

    @property
    def hosts(self) -> list[str]:
        return sorted(self.restore)


def undo_plan(
    details: RunDetails,
    history: Mapping[tuple[str, str], Sequence[SwitchRecord]],
    *,
    force: bool = False,
) -> UndoPlan:
    """For each host and root the run switched: what was live before its first switch
    there. A host that another run has switched to something else since is refused
    (named), unless `force` (one switched and switched back is not); one that is on that
    release already is left alone; one with nothing before is refused."""
    run = details.run
    plan = UndoPlan(run.id)
    mine: dict[tuple[str, str], list[SwitchRecord]] = {}
    for switch in details.switches:
        mine.setdefault((switch.host, switch.root), []).append(switch)
    for (host, root), switches in sorted(mine.items()):
        verdict = _undo_one(run.id, switches, history.get((host, root), ()), force)
        if isinstance(verdict, _Settled):
            plan.settled.append(f"{host}: {verdict.why}")
        elif isinstance(verdict, _Refused):
            plan.refused.append(f"{host}: {verdict.why}")
        else:
            plan.restore.setdefault(host, {})[root] = verdict.before
            plan.changes.append(f"{host}: {root} {verdict.live} → {verdict.before}")
    return plan


def undo_here(
    history: Mapping[tuple[str, str], Sequence[SwitchRecord]],
    host: str,
    root: str,
    which: str,
    *,
    hosts: Sequence[str],
    current_run: str,
    force: bool = False,
) -> tuple[str | None, str]:
    """For a release step's `undo: RUN_ID` (or `last`: the last deploy, `last_deploy`, on
    any of `hosts` by a run other than this one) on one host: (the release to put
    back, what it undoes), or (None, why there is nothing to do here: the run did not
    switch this host, or it is back already). Raises ValueError where it must not go back:
    nothing was live before, or another run has switched the host since (unless `force`)."""
    if which == "last":  # over every root: the lab's hosts, say, each have their own
        targets = set(hosts)
        found = last_deploy(
            s
            for (h, _), switches in history.items()
            if h in targets
            for s in switches
            if s.run_id != current_run
        )
        if found is None:
            raise ValueError("no run on record has deployed a release on these hosts: no last run")
        which = found
    here = history.get((host, root), ())
    mine = [s for s in here if s.run_id == which]
    if not mine:
        return None, f"run {which} did not switch {root} on this host: nothing to undo"
    verdict = _undo_one(which, mine, here, force)
    if isinstance(verdict, _Refused):
        raise ValueError(verdict.why.replace("--force", "force: true"))
    if isinstance(verdict, _Settled):
        return None, verdict.why
    return verdict.before, f"undoes run {which}: {root} {verdict.live} → {verdict.before}"


def last_deploy(switches: Iterable[SwitchRecord]) -> str | None:
    """The newest run among `switches` that deployed (switched to a named release), not one
    that only switched back: so undoing "the last run" twice does not bring back what the
    first undo took away."""
    deploys = [s for s in switches if s.source == "activate"]
    return max(deploys, key=lambda s: s.event).run_id if deploys else None


@dataclass(frozen=True)
class _Restore:
    live: str
    before: str


@dataclass(frozen=True)
class _Settled:
    why: str


@dataclass(frozen=True)
class _Refused:
    why: str


def _undo_one(
    run_id: str,
    mine: Sequence[SwitchRecord],
    history: Sequence[SwitchRecord],
    force: bool,
) -> _Restore | _Settled | _Refused:
    """Undoing `run_id`'s switches `mine` of one root on one host, given all of that root's
    switches there (`history`)."""
    root = mine[0].root
    before = mine[0].from_version
    last = mine[-1]
    if before is None:
        return _Refused(
            f"nothing was live under {root} before run {run_id} (its first release there); "
            "there is nothing to go back to"
        )
    since = [s for s in history if s.event > last.event]
    live = since[-1].to_version if since else last.to_version
    if live == before:
        return _Settled(f"{root} is on {before} already")
    if since and live != last.to_version and not force:  # changed since, and still so
        later = since[-1]
        return _Refused(
            f"{root} was switched to {later.to_version} by run {later.run_id} since "
            f"(--force puts back {before} all the same)"
        )
    return _Restore(live, before)


def rollback_runbook(run: RunRecord, undo: UndoPlan) -> RunbookFile:
    """The runbook of the undoing run: the undone run's rollback steps as its steps (with
    their health checks), in the same batches, with no gate in between; a runbook with no
    rollback steps gets one release switch back per root its release steps name. Its
    `activate: previous` means what was live before the undone run (`UndoPlan.restore`)."""
    if run.runbook_text is None:
        raise ValueError(f"run {run.id} was recorded without its runbook text")
    data: dict[str, Any] = yaml.safe_load(run.runbook_text)
    # The roots as the runbook writes them (`{{ app_root }}`): rendered for each host, they
    # are the roots that host's switches name.
    roots = dict.fromkeys(
        str(step["release"]["root"])
        for step in data.get("steps") or ()
        if isinstance(step, dict) and isinstance(step.get("release"), dict)
    )
    steps = data.get("rollback") or [
        {
            "name": f"Back to what was live before run {run.id}",
            "release": {"root": root, "activate": "previous"},
        }
        for root in roots
    ]
    strategy = dict(data.get("strategy") or {})
    strategy.pop("between_batches", None)
    used = _names_in(steps)  # only the parameters these steps use: an artifact's path,
    # say, need not exist any more to undo its deploy
    params = {name: spec for name, spec in (data.get("params") or {}).items() if name in used}
    derived: dict[str, Any] = {
        "name": f"{data.get('name')} (rollback of {run.id})",
        "description": f"Puts back what was live before run {run.id}.",
        "params": params,
        "targets": data.get("targets"),
        "strategy": strategy,
        "steps": steps,
        "on_failure": "stop",
    }
    if data.get("lock"):
        derived["lock"] = data["lock"]
    text = yaml.safe_dump(derived, sort_keys=False, allow_unicode=True)
    return runbook_from_text(text, run.runbook_path)


def registered_values(undone: RunDetails) -> dict[str, dict[str, Any]]:
    """What each host registered in the undone run, as its own rollback would have seen it."""
    from .executor.progress import Progress, RunState

    run = undone.run
    if run.runbook_text is None:
        return {}
    book = runbook_from_text(run.runbook_text, run.runbook_path).runbook
    hosts = [h for batch in run.batches for h in batch]
    state = RunState.of(undone)
    return Progress(hosts, book.steps, book.rollback, state).registered


def _names_in(value: Any, key: str | None = None) -> set[str]:
    """Every name the templates and expressions (`when`, `assert`) in `value` read."""
    if isinstance(value, str):
        try:
            if key in ("when", "that", "assert"):
                return names_used(value, expression=True)
            return names_used(value) if is_template(value) else set()
        except TemplateProblem:
            return set()  # the plan names the problem
    if isinstance(value, dict):
        return {n for k, v in value.items() for n in _names_in(v, str(k))}
    if isinstance(value, list):
        return {n for item in value for n in _names_in(item, key)}
    return set()


def prepare_undoing(run: RunRecord, undo: UndoPlan, operator: str, run_id: str | None) -> Prepared:
    """The run that puts back what `undo` says on exactly its hosts, every check made:
    refused while any host is, or when nothing is left to put back; the parameters `run`
    recorded that its rollback steps use (secrets given again); its inventory as recorded,
    limited to those hosts."""
    if undo.refused:
        raise Refused(
            f"rollback of run {undo.run_id} refused, nothing was done: " + "; ".join(undo.refused)
        )
    if not undo.restore:
        raise Refused(f"run {undo.run_id} changed nothing that is not already back")
    runbook_file = rollback_runbook(run, undo)
    secrets = set(run.secret_names or ())
    declared = runbook_file.runbook.params  # those its rollback steps use
    given = {
        k: v for k, v in run.params.items() if k in declared and k not in secrets and v is not None
    }
    prepared = prepare_file(
        runbook_file,
        list(run.inventory or ()),
        [],
        ",".join(undo.hosts),
        operator,
        None,
        given,
        run_id=run_id,
        registered=registered_names(run),
    )
    require_secrets(run, prepared.runbook_file, prepared)
    planned = sorted(h for batch in prepared.plan.batches for h in batch)
    if planned != undo.hosts:
        raise InputError(
            Problem(
                f"the inventory run {undo.run_id} used no longer gives the hosts it "
                f"switched ({', '.join(undo.hosts)}); nothing was done"
            )
        )
    return prepared
