"""The handover: `report` (what changed, where, who approved, how to roll back — one
verifiable file) and `handover tick|list` (the runbook's checklist, ticked by people).
Registered on the app in `cli/__init__`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .options import DEFAULT_DB, DbOpt, InventoryOpt, KnownHostsOpt, OperatorOpt, out
from .runs import RunIdArg


def report(
    run_id: Annotated[
        str | None,
        typer.Argument(metavar="[RUN_ID]", help="One run (and the runs that undid it)."),
    ] = None,
    change_id: Annotated[
        str | None, typer.Option("--change-id", metavar="ID", help="Every run of a change.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="UTC", help="Runs requested from then (2026-11-01)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", metavar="UTC", help="…and before then.")
    ] = None,
    limit: Annotated[
        str | None,
        typer.Option(
            "--limit",
            "-l",
            metavar="PATTERN",
            help="With --since/--until: only runs on hosts that match (names or globs, "
            "colon-separated: web*:db1); only those hosts are reported.",
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", metavar="html|md|json", help="The file's format.")
    ] = "html",
    lang: Annotated[
        str, typer.Option("--lang", metavar="en|zh", help="Labels in English or Chinese.")
    ] = "en",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write it here (default: stdout)."),
    ] = None,
    check_hosts: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Also read each host's live release over SSH and report drift (observed, "
            "apart from the record). Needs -i.",
        ),
    ] = False,
    inventory: InventoryOpt = None,
    known_hosts: KnownHostsOpt = None,
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """The handover report: what changed, where, who approved, how to roll back.

    For one run, a change (--change-id, all its runs, rollbacks included), or a period
    (--since/--until, with -l for hosts). It says, per host, the release before and after
    and the outcome; who requested and who approved, with comments; failures and
    rollbacks; the exact rollback command; the handover checklist (the runbook's
    `handover:` items, ticked with `handover tick`, and what the tool checks itself); the
    runbooks with SHA-256 and text, parameters (secrets masked), the inventory as planned
    and the commands as rendered. HTML (self-contained; print it to PDF from a browser on
    A4), Markdown or JSON; `--lang zh` for Chinese labels.

    It rests on the audit chain up to its own `report.made` event, which it names (seq and
    hash); `runbook-exec audit verify --report FILE` proves every fact and every character.

    Example: `runbook-exec report --change-id CHG-1042 --lang zh -o CHG-1042.html`
    """
    from .. import report as reports
    from ..errors import InputError, Problem
    from ..inventory import select_hosts
    from ..service import Service

    selection = reports.Selection(run_id, change_id, since, until, limit)
    selection.check()
    if check_hosts and not inventory:
        raise InputError(Problem("--check needs -i INVENTORY to reach the hosts"))
    hosts = None
    if check_hosts and inventory:
        hosts = {h.name: h for h in select_hosts(inventory, "all", None)}
    if output is not None and output.exists() and not output.is_file():
        raise InputError(Problem("not a regular file", str(output), field="--output"))
    if output is not None and not output.absolute().parent.is_dir():
        raise InputError(Problem("its folder does not exist", str(output), field="--output"))
    text = reports.make(Service.open(db, operator), selection, fmt, lang, hosts, known_hosts)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_bytes(text.encode("utf-8"))
    except OSError as exc:
        why = f"cannot write it: {exc.strerror} (the report.made event is recorded; make it again)"
        raise InputError(Problem(why, str(output), field="--output")) from None
    out().print(f"report written to {escape(str(output))} ({len(text.encode())} bytes)")


handover_app = typer.Typer(
    help="The handover checklist: the items a runbook declares under `handover:`, ticked "
    "by people; the report shows who ticked what, and when.",
    no_args_is_help=True,
)


@handover_app.command("tick")
def handover_tick(
    run_id: RunIdArg,
    item: Annotated[
        str, typer.Argument(metavar="ITEM", help="The item's text, or its number in `list`.")
    ],
    comment: Annotated[
        str | None, typer.Option("--comment", "-m", metavar="TEXT", help="Recorded with it.")
    ] = None,
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Tick a handover item of a run: recorded as an audit event (who, when, comment).

    Example: `runbook-exec handover tick 20261201-101500-a1b2c3 "backup verified" -m "restored
    last night's dump to staging"`
    """
    from ..service import Service

    service = Service.open(db, operator)
    ticked = service.tick(run_id, item, comment)
    out().print(f"ticked by {escape(service.operator)}: {escape(ticked)}")


@handover_app.command("list")
def handover_list(run_id: RunIdArg, db: DbOpt = DEFAULT_DB) -> None:
    """A run's handover items, numbered, and who ticked each (from the record)."""
    from ..service import Service
    from ..views import print_flags

    service = Service.open(db)
    print_flags(out(), service.run(run_id, outputs=False).flags)
    for number, (item, tick) in enumerate(service.handover(run_id), 1):
        said = f" — {tick.comment}" if tick and tick.comment else ""
        state = f"ticked by {tick.by} at {_when(tick.at)}{said}" if tick else "open"
        out().print(f"{number}. {'☑' if tick else '☐'} {escape(item)}: {escape(state)}")


def _when(at: float) -> str:
    from ..jsonout import rfc3339

    return str(rfc3339(at))
