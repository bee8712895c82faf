"""The web view: `serve`, and `users add|remove|list` for who may sign in to it.
Registered on the app in `cli/__init__`; the web stack is imported only by `serve`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import InputError, Problem
from .options import DEFAULT_DB, DbOpt, OperatorOpt, out


def serve(
    bind: Annotated[
        str,
        typer.Option("--bind", metavar="HOST:PORT", help="Where to listen (loopback by default)."),
    ] = "127.0.0.1:8800",
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Serve the web view of the record: runs, a run's steps on every host, outputs, the
    handover report, the audit trail. Sign in as a user made with `users add`.

    Everything shown is read from the verified audit trail; where the record does not
    verify, the page says so. Put it behind a TLS proxy to reach it from elsewhere (the
    session cookie is then marked Secure).

    Example: `runbook-exec serve --bind 127.0.0.1:8800`
    """
    import uvicorn

    from ..settings import config_dir
    from ..web import create_app
    from ..web.auth import server_secret

    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(Problem(f"{bind!r} is not HOST:PORT", field="--bind"))
    app = create_app(db, server_secret(config_dir()))
    out().print(f"serving the record of {escape(db)} on http://{escape(bind)}/ (Ctrl-C stops)")
    # The peer address is the connection's own: a client's X-Forwarded-For is not
    # believed (the sign-in limit is kept per name and address).
    uvicorn.run(
        app,
        host=host.strip("[]"),
        port=int(port),
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )


def _check_name_and_role(name: str, role: str) -> None:
    """A user's or token's name and role, refused (exit 2) unless usable."""
    from ..web.auth import ROLES

    if role not in ROLES:
        raise InputError(Problem(f"{role!r}: one of {', '.join(ROLES)}", field="--role"))
    if not name.strip() or len(name) > 200 or any(c.isspace() for c in name):
        raise InputError(Problem(f"{name!r}: a name is 1-200 characters, no spaces", field="NAME"))


users_app = typer.Typer(
    help="Who may sign in to the web view (`serve`), and as what: viewer (reads), operator "
    "(also decides gates), admin.",
    no_args_is_help=True,
)

RoleOpt = Annotated[
    str, typer.Option("--role", metavar="viewer|operator|admin", help="What the user may do.")
]


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The name to sign in with.")],
    role: RoleOpt = "viewer",
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from stdin (for scripts)."),
    ] = False,
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Add a web user (or give one a new role and password); recorded in the audit trail.

    Asks for the password twice on a terminal; with --password-stdin, reads one line.

    Example: `runbook-exec users add dana --role viewer`
    """
    import getpass

    from ..recorders import Auditor
    from ..service import same_person
    from ..store import Store
    from ..store.audit import operator_name
    from ..web.auth import hash_password

    _check_name_and_role(name, role)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise InputError(Problem("the two passwords differ", field="password"))
    else:
        raise InputError(Problem("no terminal to ask on: give --password-stdin", field="password"))
    if len(password) < 8:
        raise InputError(Problem("a password has at least 8 characters", field="password"))
    store = Store.open(db)
    store.require_key()
    alike = [
        u["name"]
        for u in store.users()
        if u["name"] != name and same_person(u["name"]) == same_person(name)
    ]
    if alike:
        raise InputError(
            Problem(f"{name!r} reads as user {alike[0]!r}: one person, one name", field="NAME")
        )
    store.put_user(name, role, hash_password(password))
    Auditor.outside_runs(store, operator_name(operator)).append("user.added", user=name, role=role)
    out().print(f"user {escape(name)} ({role}) can sign in to `runbook-exec serve`")


@users_app.command("remove")
def users_remove(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Remove a web user: their session ends at their next request; recorded."""
    from ..errors import NotFound
    from ..recorders import Auditor
    from ..store import Store
    from ..store.audit import operator_name

    store = Store.open(db)
    if not store.remove_user(name):
        raise NotFound(f"no web user {name!r} in the state store {store.where}")
    Auditor.outside_runs(store, operator_name(operator)).append("user.removed", user=name)
    out().print(f"user {escape(name)} removed")


@users_app.command("list")
def users_list(db: DbOpt = DEFAULT_DB) -> None:
    """The web users and their roles."""
    from ..jsonout import rfc3339
    from ..store import Store

    for row in Store.open(db).users():
        out().print(f"{escape(row['name'])}  {row['role']}  since {rfc3339(row['created_at'])}")


tokens_app = typer.Typer(
    help="Bearer tokens for scripts and monitoring: the JSON API and /metrics of `serve` "
    "(send `Authorization: Bearer TOKEN`). A token is shown once; the store keeps its "
    "SHA-256.",
    no_args_is_help=True,
)


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="What it is for: prometheus.")],
    role: RoleOpt = "viewer",
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Make a token (a new one replaces the old of that name); prints it once; recorded.

    Example: `runbook-exec tokens create prometheus > /etc/prometheus/runbook-exec.token`
    """
    import hashlib
    import secrets

    from ..recorders import Auditor
    from ..store import Store
    from ..store.audit import operator_name

    _check_name_and_role(name, role)
    token = "rbx_" + secrets.token_urlsafe(32)
    store = Store.open(db)
    store.require_key()
    store.put_token(name, role, hashlib.sha256(token.encode()).hexdigest())
    Auditor.outside_runs(store, operator_name(operator)).append(
        "token.created", token=name, role=role
    )
    typer.echo(token)


@tokens_app.command("revoke")
def tokens_revoke(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Revoke a token: refused from its next request on; recorded."""
    from ..errors import NotFound
    from ..recorders import Auditor
    from ..store import Store
    from ..store.audit import operator_name

    store = Store.open(db)
    if not store.remove_token(name):
        raise NotFound(f"no token {name!r} in the state store {store.where}")
    Auditor.outside_runs(store, operator_name(operator)).append("token.revoked", token=name)
    out().print(f"token {escape(name)} revoked")


@tokens_app.command("list")
def tokens_list(db: DbOpt = DEFAULT_DB) -> None:
    """The tokens' names and roles (never the tokens)."""
    from ..jsonout import rfc3339
    from ..store import Store

    for row in Store.open(db).tokens():
        out().print(f"{escape(row['name'])}  {row['role']}  since {rfc3339(row['created_at'])}")
