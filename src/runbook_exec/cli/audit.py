"""`runbook-exec audit …`: verify the trail, export it, checkpoint it, prune old output.

Reading, exporting, checkpointing and pruning the trail are audit events themselves.
"""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from ..errors import InputError, Problem
from .auditfiles import event_at, export_rows, read_checkpoint, utc_option
from .options import DEFAULT_DB, DbOpt, OperatorOpt, err, out

if TYPE_CHECKING:
    from ..store import Store
    from ..store.audit import Verified
    from ..store.keys import KeyRing

audit_app = typer.Typer(
    help=(
        "The audit trail: verify that it is whole, export it, keep a signed checkpoint, prune "
        "old output, rotate its key. The chain's hashes are "
        "HMAC-SHA256 with the store's audit key: RUNBOOK_EXEC_AUDIT_KEY, the file named by "
        "RUNBOOK_EXEC_AUDIT_KEY_FILE, or one made for a new SQLite store in "
        "~/.config/runbook-exec/audit-keys/ (0600). The store records the key's id, never "
        "the key."
    ),
    no_args_is_help=True,
)

UtcOpt = Annotated[
    str | None,
    typer.Option(metavar="UTC", help="A UTC date or time: 2026-11-01 or 2026-11-01T08:00."),
]


@audit_app.command("verify")
def audit_verify(
    file: Annotated[
        Path | None,
        typer.Option("--file", metavar="EXPORT", help="Verify an export (.jsonl or .csv) instead."),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            metavar="FILE",
            help="Also prove the chain still extends this checkpoint (nothing cut off the "
            "end, nothing rewritten since).",
        ),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            metavar="FILE",
            help="The Ed25519 public key (PEM, or an ssh-ed25519 line) that signed the checkpoint.",
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            metavar="FILE",
            help="Check a report from `runbook-exec report` (HTML, Markdown or JSON) against "
            "the chain (or the --file export): every fact and every character.",
        ),
    ] = None,
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Recompute the hash chain: OK with the count, or the first event that does not hold.

    Says why (changed, missing, inserted, reordered). Exit 0 intact, 1 not.

    With --report, checks that report instead: the chain holds up to the report's own event,
    that event made it, and what it says is exactly what those events say.

    Example: `runbook-exec audit verify --report CHG-1042.html --file trail.jsonl`"""
    from ..store import checkpoints
    from ..store.audit import verify

    if report is not None:
        _verify_report(report, file, operator, db)
        return
    point = read_checkpoint(checkpoint) if checkpoint else None
    trusted = checkpoints.load_public_key(public_key) if public_key else None
    store, keys, rows = _trail(file, db)
    if file is not None and not rows:  # nothing in it can be wrong, and nothing is proven
        raise InputError(Problem("holds no audit events: nothing to verify", str(file)))
    verified = verify(rows, keys)
    key = _head_key(keys, verified)
    if verified.finding is None and point is not None:
        verified.finding = checkpoints.check(point, rows, key, trusted)
    if store is not None:
        _record(
            store, operator, "audit.verified", ok=verified.finding is None, count=verified.count
        )
    if verified.finding is not None:
        _not_intact(verified)
    extends = " and extends the checkpoint" if point is not None else ""
    pruned = f"; {verified.pruned} with output pruned" if verified.pruned else ""
    out().print(
        f"[green]audit trail OK[/green]: {verified.count} events, chain intact "
        f"({_keyed(verified)}){extends}{pruned}"
    )
    if verified.unkeyed and not verified.key_ids:
        out().print(
            "[yellow]this trail is not keyed[/yellow]: anyone who can write the database can "
            "recompute it; `runbook-exec audit rotate-key` keys it from now on"
        )
    elif verified.unkeyed:
        out().print(
            "[yellow]the events before its first key are not keyed[/yellow]: anyone who can "
            "write the database could have recomputed them before the key was set"
        )


def _verify_report(path: Path, file: Path | None, operator: str | None, db: str) -> None:
    from .. import report as reports

    try:
        text = path.read_bytes().decode("utf-8")  # as written: a CR is a change too
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise InputError(Problem(f"cannot read it: {why}", str(path))) from None
    store, keys, rows = _trail(file, db)
    try:
        verdict = reports.verify(text, rows, keys)
    except InputError as exc:
        raise InputError([Problem(p.message, str(path)) for p in exc.problems]) from None
    if store is not None:
        _record(
            store, operator, "audit.report_verified", ok=verdict.ok, report_event=verdict.anchor
        )
    if not verdict.ok:
        out().print(f"[red]report NOT verified[/red]: {escape(str(path))}")
        for finding in verdict.findings:
            out().print(f"  {escape(finding)}")
        raise typer.Exit(1)
    observed = (
        f"; {verdict.observed} observations from the hosts are not in the record and were "
        "not checked"
        if verdict.observed
        else ""
    )
    out().print(
        f"[green]report OK[/green]: every fact and every line of {escape(str(path))} is what "
        f"audit events 1–{verdict.anchor} say (chain intact, {verdict.events} events){observed}"
    )


@audit_app.command("export")
def audit_export(
    run: Annotated[str | None, typer.Option("--run", metavar="RUN_ID")] = None,
    host: Annotated[str | None, typer.Option("--host")] = None,
    operator_filter: Annotated[
        str | None, typer.Option("--by", metavar="OPERATOR", help="Events of this operator.")
    ] = None,
    change_id: Annotated[str | None, typer.Option("--change-id")] = None,
    since: UtcOpt = None,
    until: UtcOpt = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="jsonl|csv",
            help="jsonl: one event per line. csv: readable columns (when, what, who, where, "
            "outcome) plus the hashed body, for a spreadsheet. Both verify with "
            "`audit verify --file`.",
        ),
    ] = "jsonl",
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Print the trail: each event's seq, prev_hash, hash, hashed body and output.

    A whole export verifies with `audit verify --file` or the README's snippet; a filtered
    one still lets each event's hash be checked against its prev_hash."""
    from ..store.audit import verify
    from ..store.export import export_csv, export_lines

    if fmt not in ("jsonl", "csv"):
        raise InputError(Problem(f"{fmt!r}: choose jsonl or csv", field="--format"))
    since_at = utc_option(since, "--since").isoformat() if since else None
    until_at = utc_option(until, "--until").isoformat() if until else None
    store = _store(db)
    store.require_key()

    def wanted(row: dict[str, Any]) -> bool:
        return (
            (run is None or row["run_id"] == run)
            and (host is None or row["host"] == host)
            and (operator_filter is None or row["operator"] == operator_filter)
            and (change_id is None or row["change_id"] == change_id)
            and (since_at is None or event_at(row) >= since_at)
            and (until_at is None or event_at(row) < until_at)
        )

    everything = store.audit_events()
    verified = verify(everything, store.keys)
    rows = (r for r in everything if wanted(r))
    for chunk in export_csv(rows) if fmt == "csv" else (f"{line}\n" for line in export_lines(rows)):
        typer.echo(chunk, nl=False)
    filters = {"run": run, "host": host, "operator": operator_filter, "change_id": change_id}
    _record(
        store,
        operator,
        "audit.exported",
        format=fmt,
        filters={**filters, "since": since, "until": until},
        intact=verified.finding is None,
    )
    if verified.finding is not None and verified.finding.missing_key:
        err().print(f"[yellow]exported, but not verified[/yellow]: {escape(str(verified.finding))}")
        raise typer.Exit(4)
    if verified.finding is not None:
        err().print(
            f"[red]the exported trail does not verify[/red]: {escape(str(verified.finding))}; "
            "exported as it is, as evidence"
        )
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint(
    sign_key: Annotated[
        Path | None,
        typer.Option(
            "--sign-key",
            metavar="FILE",
            help="Sign with this Ed25519 private key (PEM, or OpenSSH from ssh-keygen -t "
            "ed25519) instead of the audit key; verifying then needs only the public key.",
        ),
    ] = None,
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Print a signed head of the chain (count and last hash) to keep outside the database.

    Keep it in a change ticket or with an auditor; `audit verify --checkpoint FILE` proves
    later that the chain still extends it, so cutting events off its end, or rewriting it,
    is caught."""
    from ..store import checkpoints
    from ..store.audit import GENESIS

    signing = checkpoints.load_signing_key(sign_key) if sign_key else None
    store, rows, verified = _intact_store(
        db, "checkpoint refused: it would vouch for a trail that does not verify."
    )
    key = _head_key(store.keys, verified)
    head = rows[-1]["hash"] if rows else GENESIS
    typer.echo(json.dumps(checkpoints.make(len(rows), head, key, signing), indent=2))
    _record(store, operator, "audit.checkpoint", count=len(rows), head=head)


@audit_app.command("prune")
def audit_prune(
    before: Annotated[
        str,
        typer.Option(
            "--before",
            metavar="UTC",
            help="Remove output recorded before this UTC date or time (2026-01-01).",
            show_default=False,
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be removed.")
    ] = False,
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Remove old command output and keep the proof that it was there.

    Every event stays, with the SHA-256 of the output it had, so the chain still verifies
    and an output kept elsewhere can still be matched against it. Refuses a chain that does
    not verify, so tampering is never pruned away. The pruning is itself an audit event."""
    cutoff = utc_option(before, "--before")
    store, _, _ = _intact_store(db, "prune refused: the output it would remove may be evidence.")
    epoch = cutoff.replace(tzinfo=UTC).timestamp()
    if dry_run:
        counts = store.prune_output(cutoff.isoformat(), epoch, dry_run=True)
    else:
        with store.batch():  # the prune and the event that makes it provable: both or neither
            counts = store.prune_output(cutoff.isoformat(), epoch, dry_run=False)
            _record(store, operator, "audit.pruned", before=cutoff.isoformat(), removed=counts)
    said = (
        f"{counts['events']} events' output, {counts['host_steps']} host-steps' output, "
        f"{counts['task_results']} Ansible task results"
    )
    if dry_run:
        out().print(f"would remove {said} recorded before {cutoff.isoformat()}")
        return
    out().print(f"removed {said} recorded before {cutoff.isoformat()}; the chain still verifies")


@audit_app.command("rotate-key")
def audit_rotate_key(
    new_key_file: Annotated[
        Path | None,
        typer.Option(
            "--new-key-file",
            metavar="FILE",
            help="The new key (a file holding it) instead of a new random one.",
        ),
    ] = None,
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Hash the trail's next events with a new audit key (or key an unkeyed trail).

    The rotation is an event hashed with the old key and naming the new key's id; the
    events before it keep verifying with the old key, so keep both. A new key is made in
    ~/.config/runbook-exec/audit-keys/ID.key (0600) unless --new-key-file gives one. Copy it
    to every machine that writes this store, and to its auditors. Refuses a trail that does
    not verify."""
    from ..store.keys import key_id

    store, _, verified = _intact_store(
        db, "rotation refused: the new key would vouch for a trail that does not verify."
    )
    if new_key_file is not None:
        try:
            if not new_key_file.is_file() or new_key_file.stat().st_size > 4096:
                raise InputError(
                    Problem("not a key file (a small regular file expected)", str(new_key_file))
                )
            new = new_key_file.read_bytes().strip()
        except OSError as exc:
            raise InputError(
                Problem(f"cannot read it: {exc.strerror}", str(new_key_file))
            ) from None
        if len(new) < 16:
            raise InputError(Problem("an audit key needs at least 16 bytes", str(new_key_file)))
        store.keys.keys[key_id(new)] = new
    else:
        new = store.keys.make_key()
    old = verified.key_ids[-1] if verified.key_ids and not verified.unkeyed else None
    if old == key_id(new):
        raise InputError(Problem("that is the key in use already", field="--new-key-file"))
    _record(store, operator, "audit.key_rotated", key_id=key_id(new), previous_key_id=old)
    where = (
        f"keep {new_key_file} and give it as RUNBOOK_EXEC_AUDIT_KEY_FILE"
        if new_key_file
        else f"it is in {store.keys.folder / (key_id(new) + '.key')}"
    )
    out().print(
        f"audit key rotated: events from now on are hashed with key {key_id(new)} "
        f"(before: {old or 'unkeyed'}); {where}. Keep the old key too: the events before "
        "still verify with it."
    )


def _trail(file: Path | None, db: str) -> tuple[Store | None, KeyRing, list[dict[str, Any]]]:
    """The chain to check: the store's (opened, its key at hand), or an export's events
    with the user's keys."""
    from ..store.keys import KeyRing

    if file is None:
        store = _store(db)
        store.require_key()
        return store, store.keys, store.audit_events()
    return None, KeyRing.load(), export_rows(file)


def _intact_store(db: str, refusal: str) -> tuple[Store, list[dict[str, Any]], Verified]:
    """The store (with the key it needs at hand), its whole chain and what verifying it
    found. A chain that does not hold is refused: `refusal` says why that matters here."""
    from ..store.audit import verify

    store = _store(db)
    store.require_key()
    rows = store.audit_events()
    verified = verify(rows, store.keys)
    if verified.finding is not None:
        out().print(refusal)
        _not_intact(verified)
    return store, rows, verified


def _head_key(keys: KeyRing, verified: Verified) -> bytes | None:
    """The key in force at the chain's head (None for an unkeyed chain)."""
    return keys.get(verified.key_ids[-1]) if verified.key_ids else None


def _keyed(verified: Verified) -> str:
    if not verified.key_ids:
        return "SHA-256, unkeyed"
    if verified.unkeyed:
        return f"SHA-256, then HMAC-SHA256 with key {' then '.join(verified.key_ids)}"
    return f"HMAC-SHA256 with key {' then '.join(verified.key_ids)}"


def _not_intact(verified: Verified) -> None:
    _refuse_missing_key(verified)
    out().print(
        f"[red]audit trail NOT intact[/red]: {escape(str(verified.finding))} "
        f"({verified.count} events verified before it)"
    )
    raise typer.Exit(1)


def _store(db: str) -> Store:
    from ..store import Store

    return Store.open(db)


def _record(store: Store, operator: str | None, kind: str, **fields: Any) -> None:
    """Reading, exporting, checkpointing and pruning the trail are audit events themselves."""
    from ..recorders import Auditor
    from ..store.audit import operator_name

    Auditor.outside_runs(store, operator_name(operator)).append(kind, **fields)


def _refuse_missing_key(verified: Verified) -> None:
    """A key not at hand is not tampering: exit 4, naming the key and where it was sought."""
    from ..store.keys import AuditKeyError

    if verified.finding is not None and verified.finding.missing_key:
        raise AuditKeyError(
            f"cannot verify {verified.finding} ({verified.count} events verified before it); "
            "nothing is known to be wrong, but nothing from there on is checked"
        )
