"""Making a resume ready from the record, every check made before anything connects: the
runbook text as recorded (its SHA-256 checked), the parameters as recorded (secrets given
again), the same hosts reached the same way, the same plan rendered."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .errors import InputError, Problem
from .prepare import Prepared, prepare_file
from .record import Record, RecordAltered, RunRecord
from .runbook import RunbookFile, runbook_from_text
from .store import Store


def prepare_resume(
    store: Store,
    record: Record,
    run: RunRecord,
    environ: Mapping[str, str] | None = None,
    *,
    replan: bool = False,
) -> tuple[Prepared, list[str]]:
    """What a resume of `run` carries out, every check made, nothing connected or
    recorded: the plan rendered again from the record, and how the inventory now reaches
    its hosts differently (refused unless `replan`)."""
    run_id = run.id
    table = store.get_run(run_id) or {}
    text = run.runbook_text if run.runbook_text is not None else table["runbook_text"]
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != run.runbook_sha256:
        raise RecordAltered(
            f"resume refused for run {run_id}: its runbook text does not have the SHA-256 "
            f"event {run.event} holds; nothing was run"
        )
    runbook_file = runbook_from_text(text, run.runbook_path)
    secret_names = run.secret_names if run.secret_names is not None else table["secret_names"]
    given = {k: v for k, v in run.params.items() if k not in secret_names and v is not None}
    inventory = run.inventory if run.inventory is not None else table["inventory"]
    registered: list[str] = []
    if run.rollback_of is not None:
        registered = registered_names(record.run(run.rollback_of, outputs=False).run)
    prepared = prepare_file(
        runbook_file,
        inventory,
        [],
        run.limit,
        run.operator,
        environ,
        given,
        run_id=run_id,
        registered=registered,
    )
    require_secrets(run, runbook_file, prepared)
    planned = [list(b) for b in run.batches]
    if [list(b) for b in prepared.plan.batches] != planned:
        raise InputError(
            Problem(
                f"the inventory no longer gives run {run_id} the hosts it planned "
                f"({', '.join(h for b in planned for h in b)}); nothing was run"
            )
        )
    changed = connections_changed(run.connections, prepared.plan.connections)
    if changed and not replan:
        raise InputError(
            Problem(
                f"the inventory no longer reaches run {run_id}'s hosts as planned: "
                f"{'; '.join(changed)}. Put it back, or resume with --replan to use the "
                "inventory as it is now (recorded); nothing was run"
            )
        )
    if run.work_digest is not None and prepared.plan.work_digest != run.work_digest:
        raise InputError(
            Problem(
                f"run {run_id}'s plan no longer renders as event {run.event} recorded it: an "
                "inventory variable or a parameter read from the environment changed since "
                "it started; put it back, or start a new run; nothing was run"
            )
        )
    return prepared, changed


def require_secrets(run: RunRecord, runbook_file: RunbookFile, prepared: Prepared) -> None:
    """Exit 2, naming its variable, for a secret that had a value when `run` started and has
    none now: its value is never recorded, so it must be given again (never "None")."""
    missing = [
        name
        for name in run.secret_names or ()
        if name in prepared.params.values
        and run.params.get(name) is not None
        and prepared.params.values[name] is None
    ]
    if missing:
        params = runbook_file.runbook.params

        def where(name: str) -> str:
            param = params.get(name)
            return param.env if param is not None and param.env else "its variable"

        raise InputError(
            Problem(
                f"secret parameter {name!r} had a value when run {run.id} started and has "
                f"none now: set {where(name)} again (secrets are never recorded); nothing "
                "was run",
                field=f"params.{name}",
            )
            for name in missing
        )


def connections_changed(
    planned: Mapping[str, Any] | None, now: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """`host2: port 2202 → 2203`, for each way the inventory now reaches a planned host
    differently (a run recorded before connections were: nothing to compare)."""
    if planned is None:
        return []
    changes = []
    for host, was in planned.items():
        is_now = now.get(host, {})
        for key in sorted(set(was) | set(is_now)):
            if was.get(key) != is_now.get(key):
                changes.append(f"{host}: {key} {was.get(key)} → {is_now.get(key)}")
    return changes


def registered_names(undone: RunRecord) -> list[str]:
    """What the undone run's steps register: names its rollback steps may test."""
    if undone.runbook_text is None:
        return []
    book = runbook_from_text(undone.runbook_text, undone.runbook_path).runbook
    return [step.register_as for step in book.steps if step.register_as]
