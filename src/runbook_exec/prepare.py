"""A request made ready to run, show or check: the runbook loaded, the parameters resolved,
the hosts selected and the plan rendered — every problem found before anything connects.
What `run`, `resume`, `plan` and `check` share, so that a run makes every check `check`
makes, through the same code, before it connects anywhere; it imports nothing that talks
to hosts or to the store, so that `plan` and `check` start fast."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checks
from .durations import is_number
from .errors import InputError, Problem
from .inventory import Host, select_hosts
from .params import GivenValue, ResolvedParams, parse_extra_vars, resolve_params
from .plan import PLAN_ONLY_RUN_ID, Plan, build_plan
from .runbook import RunbookFile, load_runbook

if TYPE_CHECKING:
    from .executor import RunOptions
    from .transports.ansible import PlaybookOutcome


@dataclass(frozen=True)
class Prepared:
    """A validated request: everything needed to run, found without connecting anywhere."""

    runbook_file: RunbookFile
    inventory: tuple[str, ...]
    hosts: list[Host]
    params: ResolvedParams
    plan: Plan
    limit: str | None
    run_id: str | None = None
    """The id the plan was rendered with (`{{ run.id }}`); None for a plan only shown."""


@dataclass(frozen=True)
class Checked:
    """A runbook that `check` found nothing wrong with; the plan when hosts were given."""

    runbook_file: RunbookFile
    plan: Plan | None
    warnings: list[Problem] = field(default_factory=list)


def prepare(
    runbook: Path,
    inventory: Sequence[Path],
    extra_vars: Sequence[str],
    limit: str | None,
    operator: str,
    environ: Mapping[str, str] | None = None,
    *,
    run_id: str | None = None,
    verify: bool = True,
) -> Prepared:
    """Load and check everything a run needs; `InputError` lists every problem found. With
    `run_id`, the plan is the one that run will carry out; without, one to show. With
    `verify` (what a run does), also every other check `check` makes: local files, what the
    controller needs, playbook syntax; without (`plan`), only what the plan itself needs."""
    runbook_file = load_runbook(runbook, str(runbook))
    sources = [str(p) for p in inventory]
    return prepare_file(
        runbook_file, sources, extra_vars, limit, operator, environ, run_id=run_id, verify=verify
    )


def prepare_file(
    runbook_file: RunbookFile,
    inventory: Sequence[str],
    extra_vars: Sequence[str],
    limit: str | None,
    operator: str,
    environ: Mapping[str, str] | None,
    given_values: Mapping[str, Any] | None = None,
    *,
    run_id: str | None,
    verify: bool = True,
    registered: Collection[str] = (),
) -> Prepared:
    """`prepare` for a runbook already loaded (a resume loads it from the record, and
    gives the recorded parameter values in `given_values`)."""
    problems: list[Problem] = []
    params = hosts = None
    try:
        given = parse_extra_vars(list(extra_vars))
        declared = runbook_file.runbook.params
        for name, value in (given_values or {}).items():
            param = declared.get(name)
            if param is not None and param.type == "duration" and is_number(value):
                value = f"{value}s"  # recorded as seconds; as written, a number needs its unit
            given.setdefault(name, GivenValue(value, "the run's record"))
        params = resolve_params(runbook_file, given, environ or os.environ, Path.cwd())
    except InputError as exc:
        problems.extend(exc.problems)
    if not inventory:
        problems.append(Problem("no inventory given; use -i INVENTORY (repeatable)"))
    else:
        try:
            hosts = select_hosts(inventory, runbook_file.runbook.targets, limit)
            problems.extend(checks.connections(hosts))
            problems.extend(checks.become_methods(runbook_file, hosts))
        except InputError as exc:
            problems.extend(exc.problems)
    problems.extend(checks.template_syntax(runbook_file))
    if problems or params is None or hosts is None:
        raise InputError(problems)
    plan = build_plan(
        runbook_file,
        hosts,
        params,
        limit=limit,
        run={"id": run_id or PLAN_ONLY_RUN_ID, "operator": operator},
        registered=registered,
    )
    problems = _beyond_the_plan(runbook_file, plan) if verify else []
    if problems:
        raise InputError(problems)
    return Prepared(runbook_file, tuple(inventory), hosts, params, plan, limit, run_id)


def _beyond_the_plan(runbook_file: RunbookFile, plan: Plan | None) -> list[Problem]:
    """What `check` verifies besides the plan, and `run`, `resume` and `plan` before
    anything connects: the local files the steps need, what the controller needs to run
    each kind, and every playbook's syntax."""
    return [
        *checks.per_host_ansible_args(runbook_file, plan),
        *checks.missing_files(runbook_file, plan),
        *checks.requirements(runbook_file),
        *checks.playbook_syntax(runbook_file),
    ]


def check(
    runbook: Path,
    inventory: Sequence[Path],
    extra_vars: Sequence[str],
    limit: str | None,
    operator: str,
    environ: Mapping[str, str] | None = None,
) -> Checked:
    """Everything `check` verifies, every problem collected (`InputError`): fields,
    parameters, hosts (with an inventory), template and expression syntax, every template
    for every host, local files, what the controller needs, playbook syntax."""
    runbook_file = load_runbook(runbook, str(runbook))
    problems: list[Problem] = []
    params = hosts = plan = None
    try:
        given = parse_extra_vars(list(extra_vars))
        params = resolve_params(runbook_file, given, environ or os.environ, Path.cwd())
    except InputError as exc:
        problems.extend(exc.problems)
    if inventory:
        try:
            hosts = select_hosts([str(p) for p in inventory], runbook_file.runbook.targets, limit)
            problems.extend(checks.connections(hosts))
            problems.extend(checks.become_methods(runbook_file, hosts))
        except InputError as exc:
            problems.extend(exc.problems)
    problems.extend(checks.template_syntax(runbook_file))
    if params is not None and hosts is not None and not problems:
        try:
            run = {"id": PLAN_ONLY_RUN_ID, "operator": operator}
            plan = build_plan(runbook_file, hosts, params, limit=limit, run=run)
        except InputError as exc:
            problems.extend(exc.problems)
    problems.extend(_beyond_the_plan(runbook_file, plan))
    if problems:
        raise InputError(problems)
    return Checked(runbook_file, plan, checks.braced_whens(runbook_file))


def check_mode(prepared: Prepared, options: RunOptions) -> list[tuple[str, PlaybookOutcome]]:
    """Run the plan's playbook and module steps in Ansible's check mode on every planned
    host: what they would change, changing nothing (and recording nothing). Steps before
    them have not run, so what they would have changed is not seen here."""
    from .steps import Scope
    from .transports.ansible import AnsibleSettings, run_playbook

    settings = AnsibleSettings(
        options.known_hosts,
        options.accept_new_host_keys,
        options.forks,
        options.timeout,
        prepared.params.secrets.adding([options.become_password or ""]),
        options.become_password,
    )
    hosts = [h.name for h in prepared.hosts]

    async def all_steps() -> list[tuple[str, PlaybookOutcome]]:
        results = []
        for planned in prepared.plan.steps:
            steps = [r.step for r in planned.hosts.values() if r.step is not None]
            if not steps or steps[0].scope is not Scope.HOSTS:
                continue
            playbook, call = steps[0].ansible_call(prepared.runbook_file.workspace)
            call["check"] = True
            outcome = await run_playbook(playbook, prepared.inventory, hosts, settings, **call)
            results.append((planned.name, outcome))
        return results

    return asyncio.run(all_steps())
