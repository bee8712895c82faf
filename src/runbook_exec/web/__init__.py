"""`runbook-exec serve`: the web view over the verified record. Server-rendered pages
(FastAPI, Jinja2), no front-end build step, nothing fetched from elsewhere.

Every page reads through the record's one read API (`Record`, `Service`); what the record
cannot verify is shown flagged, never as truth. Only `serve` imports this package: the
other commands never pay for the web stack.

Pages: sign-in; runs (filters by runbook, operator, change id, host, status and dates;
paged); a run (who, why, change, runbook and its SHA-256 and text, parameters, inventory
as planned, a batch × host × step grid, gates, release switches, Ansible tasks); a
host-step's output; the handover report of a run or of a change; the audit trail (chain
status, checkpoints, exports).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InputError, NotFound, Problem, RunbookExecError
from ..jsonout import rfc3339
from ..record import History, RecordAltered, RunDetails
from ..service import Service
from ..steps.analysis import measurement_value
from ..store import Store
from .auth import (
    DECOY,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Sessions,
    SignInLimit,
    check_password,
)

HERE = Path(__file__).parent
PAGE_SIZE = 50
HISTORY_SECONDS = 5.0  # the longest a page or /metrics trusts a fold of the chain
OUTPUT_PAGE = 500  # lines of output a page shows
MAX_BODY = 64 * 1024  # a sign-in or a decision: anything bigger is refused (413)
STATUSES = (
    "pending", "running", "awaiting_approval", "succeeded", "failed", "rolled_back",
    "rollback_failed", "rejected", "cancelled", "interrupted", "refused",
)  # fmt: skip
FILTERS = ("runbook", "operator", "change", "host", "status", "since", "until")


class Web:
    """What the pages share: the store, the signed sessions, a cache of the chain's
    history (folded again only when the chain has grown)."""

    def __init__(self, db: str, secret: bytes) -> None:
        self.db = db
        self.store = Store.open(db)
        self.sessions = Sessions(secret)
        self.limit = SignInLimit()
        self._history: History | None = None
        self._folded = 0.0
        self._vouched: dict[tuple[str, str, int], str | None] = {}
        self.deciding = threading.Lock()  # one decision at a time in this server
        self.resumes: list[Any] = []
        self._lines: dict[Any, list[str]] = {}  # the last outputs read, split in lines

    def service(self, user: str) -> Service:
        return Service(self.store, user)

    def vouched_role(self, kind: str, name: str) -> str | None:
        """The role the audit trail gives a web user (`kind` "user") or a token ("token"):
        its last `user.added` (`token.created`) event, checked by its hash, unless removed
        since. None when the trail vouches for none: a row added or edited by hand in the
        users or tokens table gives nobody anything."""
        head = self.store.head_seq()
        key = (kind, name, head)
        if key in self._vouched:
            return self._vouched[key]
        kinds = (
            ("user.added", "user.removed") if kind == "user" else ("token.created", "token.revoked")
        )
        last = None
        for row in self.store.events_of(kinds):
            body = json.loads(row["body"])
            if body.get(kind) == name:
                last = (int(row["seq"]), body)
        role = None
        if last is not None and last[1].get("type") in ("user.added", "token.created"):
            role = str(last[1].get("role")) if self.store.event_holds(last[0]) else None
        self._vouched = {k: v for k, v in self._vouched.items() if k[2] == head}
        self._vouched[key] = role
        return role

    def resume(self, run_id: str, user: str) -> None:
        """Carry a run on after a decision: `runbook-exec resume` in a process of its own
        (the record says how it goes; its terminal output goes to a log file)."""
        import os
        import subprocess
        import sys

        from ..inventory import default_cache_dir

        folder = default_cache_dir() / "web"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.resumes = [p for p in self.resumes if p.poll() is None]  # reap the ended
        with open(folder / f"resume-{run_id}.log", "ab") as log:
            self.resumes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "runbook_exec",
                        "resume",
                        run_id,
                        "--no-input",
                        "--db",
                        self.db,
                        "--operator",
                        user,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, "RUNBOOK_EXEC_NO_WARM": "1"},
                )
            )

    def output_lines(
        self, user: str, run_id: str, key: tuple[str, int, str], stream: str
    ) -> tuple[Any, list[str], list[Any]]:
        """A host-step, its output's lines (from the one event that holds them, checked,
        kept for the next page) and the run's flags."""
        details = self.service(user).run(run_id, outputs=True, only=key)
        step = next((s for s in details.steps if s.key == key), None)
        if step is None:
            raise NotFound(f"run {run_id} has no step {key[0]} {key[1] + 1} on {key[2]}")
        cache_key = (run_id, key, stream, step.event)
        lines = self._lines.get(cache_key)
        if lines is None:
            text = (step.stdout if stream == "stdout" else step.stderr) or ""
            lines = text.split("\n") if text else []
            if lines and lines[-1] == "":
                lines.pop()
            self._lines = {**dict(list(self._lines.items())[-7:]), cache_key: lines}
        return step, lines, details.flags

    def history(self) -> History:
        """The chain's history, folded again when it has grown, and at least every
        HISTORY_SECONDS: an event edited in place (the head unchanged) is found then."""
        head = self.store.head_seq()
        fresh = time.monotonic() - self._folded < HISTORY_SECONDS
        if self._history is None or self._history.head != head or not fresh:
            record = Service(self.store, "web").record
            self._history = record.history(upto=head, keep=frozenset({"releases.checked"}))
            self._folded = time.monotonic()
        return self._history


class BodyLimit:
    """Refuses (413) a request whose body grows past MAX_BODY while it is read, however it
    is sent (Content-Length is checked first; a chunked body is counted here): past the
    limit the app is told the client went away, and whatever it answers is replaced."""

    def __init__(self, app: Any, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0
        over = False
        started = False

        async def counted() -> Any:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Any) -> None:
            nonlocal started
            if over:
                return  # the 413 below answers instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except BaseException:
            if not over:
                raise
        if over and not started:
            body = b"request too large\n"
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 413, "headers": headers})
            await send({"type": "http.response.body", "body": body})


def create_app(db: str, secret: bytes) -> Any:
    """The web app on the store at `db`; sessions signed with `secret` (an ASGI app, for
    uvicorn: FastAPI's, under a body limit)."""
    web = Web(db, secret)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["rfc3339"] = rfc3339
    templates.env.globals["measurement_value"] = measurement_value
    app = FastAPI(
        title="runbook-exec",
        summary="The record of runbook runs, verified: runs, host-steps, outputs, releases, audit.",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def page(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
        user = getattr(request.state, "user", None)
        nonce = getattr(request.state, "nonce", None)
        csrf = web.sessions.csrf(nonce) if nonce else ""
        role = getattr(request.state, "role", None)
        context = {"user": user, "role": role, "csrf": csrf, "acts": role in ACTORS, **context}
        return templates.TemplateResponse(request, name, context, status_code=code)

    def problem(request: Request, status: int, message: str, field: str | None = None) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message, "field": field}, status_code=status)
        return page(request, "error.html", status, status=status, message=message)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Response:
        """Bodies of a bounded size; a session for every page but sign-in; no state change
        without a POST carrying the session's CSRF token; headers that keep pages private."""
        size = request.headers.get("content-length")
        if size is not None and (not (size.isascii() and size.isdigit()) or int(size) > MAX_BODY):
            return problem(request, 413, "request too large")
        signed = web.sessions.read(request.cookies.get(SESSION_COOKIE))
        row = web.store.user(signed[0]) if signed is not None else None
        if signed is not None and (row is None or float(row["created_at"]) != signed[1]):
            signed = None  # removed since, or made again (another password)
        if signed and row and web.vouched_role("user", signed[0]) != row["role"]:
            signed = None  # the users table says what the audit trail does not
        request.state.user = signed[0] if signed else None
        request.state.nonce = signed[2] if signed else None
        request.state.role = row["role"] if signed and row else None
        bearer = request.headers.get("authorization", "")
        if signed is None and bearer.lower().startswith("bearer "):
            token = web.store.token(hashlib.sha256(bearer[7:].strip().encode()).hexdigest())
            vouched = token and web.vouched_role("token", token["name"]) == token["role"]
            if token is not None and vouched:  # a token is no browser: no cookie, no CSRF
                request.state.user = f"token:{token['name']}"
                request.state.role = token["role"]
        machine = request.url.path.startswith(("/metrics", "/api/"))
        open_paths = ("/login", "/static/")
        if request.state.user is None and not request.url.path.startswith(open_paths):
            if request.method == "GET" and not machine:
                target = urlencode({"next": request.url.path})
                return RedirectResponse(f"/login?{target}", status_code=303)
            if machine:
                return Response(
                    "a bearer token is needed (runbook-exec tokens create)\n",
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                    media_type="text/plain",
                )
            return problem(request, 401, "sign in first")
        response: Response = await call_next(request)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return problem(request, exc.status_code, str(exc.detail))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return problem(request, 404, str(exc))

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError) -> Response:
        field = exc.problems[0].field if exc.problems else None
        return problem(request, 400, "; ".join(str(p) for p in exc.problems), field)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        field = str((first.get("loc") or ("", "?"))[-1])
        return problem(request, 400, f"{field}: {first.get('msg', 'not valid')}", field)

    @app.exception_handler(RecordAltered)
    async def altered(request: Request, exc: RecordAltered) -> Response:
        return problem(request, 409, str(exc))

    @app.exception_handler(RunbookExecError)
    async def refused(request: Request, exc: RunbookExecError) -> Response:
        return problem(request, 409, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        return problem(request, 500, f"internal error ({type(exc).__name__}); see the server log")

    # --- signing in ---------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/runs") -> HTMLResponse:
        return page(request, "login.html", next=_local(next), failed=None)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await _form(request)
        name, password = form.get("user", ""), form.get("password", "")
        target = _local(form.get("next", "/runs"))
        address = request.client.host if request.client else "?"
        if web.limit.blocked(name, address):
            return page(
                request, "login.html", 429, next=target,
                failed="too many failed sign-ins: wait a few minutes",
            )  # fmt: skip
        row = web.store.user(name)
        known = check_password(password, str(row["password_hash"]) if row else DECOY)
        if row is None or not known:
            web.limit.failed(name, address)
            return page(request, "login.html", 401, next=target, failed="wrong name or password")
        if row is not None and web.vouched_role("user", name) != row["role"]:
            return page(
                request, "login.html", 409, next=target,
                failed=f"record altered: the audit trail does not vouch for user {name} as "
                f"{row['role']}; ask an admin to add the user again (users add)",
            )  # fmt: skip
        web.limit.succeeded(name, address)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            web.sessions.issue(name, float(row["created_at"])),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        await _checked_form(request, web)
        web.sessions.revoke(request.state.nonce)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
        return response

    # --- runs ---------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/runs", status_code=303)

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs(request: Request) -> HTMLResponse:
        query = {k: v for k, v in request.query_params.items() if k in (*FILTERS, "page")}
        filters, number = _filters(query)
        history = web.history()
        matching = [d for d in _newest_first(history) if _matches(d, filters)]
        pages = max(1, -(-len(matching) // PAGE_SIZE))
        shown = matching[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
        base = {k: v for k, v in filters.items() if v}
        return page(
            request,
            "runs.html",
            runs=shown,
            total=len(matching),
            number=number,
            pages=pages,
            filters=filters,
            statuses=STATUSES,
            flags=history.flags,
            link=lambda n: "/runs?" + urlencode({**base, "page": n}),
        )

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run(request: Request, run_id: str) -> HTMLResponse:
        details = web.service(request.state.user).run(run_id, outputs=False)
        return page(request, "run.html", d=details, grid=_grid(details), flags=details.flags)

    @app.post("/runs/{run_id}/decide", include_in_schema=False)
    async def decide(request: Request, run_id: str) -> Response:
        """Approve or reject the gate a run waits at (an operator, with a comment); an
        approval must come from someone else than the run's starter, unless the runbook's
        `approvers:` say who. The run then carries on (a resume is started)."""
        form = await _checked_form(request, web)
        act(request, web, run_id, form.get("decision", ""), form.get("comment", ""))
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    @app.post("/runs/{run_id}/cancel", include_in_schema=False)
    async def cancel(request: Request, run_id: str) -> Response:
        form = await _checked_form(request, web)
        decision = "cancel-rollback" if form.get("rollback") else "cancel"
        act(request, web, run_id, decision, form.get("comment", ""))
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    @app.get("/runs/{run_id}/output", response_class=HTMLResponse, include_in_schema=False)
    def output(
        request: Request,
        run_id: str,
        section: str,
        index: int,
        host: str,
        stream: str = "stdout",
        start: int = 0,
        q: str = "",
    ) -> HTMLResponse:
        """One host-step's output, a page of lines at a time (from line `start`), or the
        lines that hold `q`, with their numbers: a big output opens as fast as a small."""
        if stream not in ("stdout", "stderr"):
            raise InputError(Problem(f"{stream!r}: stdout or stderr", field="stream"))
        if index < 0:
            raise InputError(Problem(f"{index}: a step's index is 0 or more", field="index"))
        if start < 0:
            raise InputError(Problem(f"{start}: a line number is 0 or more", field="start"))
        if len(q) > 200:
            raise InputError(Problem("at most 200 characters", field="q"))
        step, lines, flags = web.output_lines(
            request.state.user, run_id, (section, index, host), stream
        )
        if q:
            found = [(n, line) for n, line in enumerate(lines, 1) if q.lower() in line.lower()]
        else:
            found = list(enumerate(lines[start : start + OUTPUT_PAGE], start + 1))
        shown = found[start : start + OUTPUT_PAGE] if q else found
        total = len(found) if q else len(lines)
        base = {"section": section, "index": index, "host": host, "stream": stream, "q": q}
        return page(
            request,
            "output.html",
            run_id=run_id,
            step=step,
            flags=flags,
            stream=stream,
            shown=shown,
            start=start,
            total=total,
            lines=len(lines),
            q=q,
            size=OUTPUT_PAGE,
            link=lambda **changes: f"/runs/{run_id}/output?" + urlencode({**base, **changes}),
        )

    @app.get("/runs/{run_id}/report", response_class=HTMLResponse, include_in_schema=False)
    def run_report(request: Request, run_id: str, lang: str = "en") -> HTMLResponse:
        from ..report import Selection, make

        text = make(web.service(request.state.user), Selection(run_id=run_id), "html", lang)
        return HTMLResponse(text)

    @app.get(
        "/changes/{change_id:path}/report", response_class=HTMLResponse, include_in_schema=False
    )
    def change_report(request: Request, change_id: str, lang: str = "en") -> HTMLResponse:
        from ..report import Selection, make

        selection = Selection(change_id=change_id)
        return HTMLResponse(make(web.service(request.state.user), selection, "html", lang))

    from .api import router

    app.include_router(router(web))

    # --- hosts ----------------------------------------------------------------------------------

    @app.get("/hosts", response_class=HTMLResponse, include_in_schema=False)
    def hosts(request: Request) -> HTMLResponse:
        """Every host on record: what is live there (each release root), since when, by
        which run, and its last run."""
        history = web.history()
        live = web.service(request.state.user).releases()
        last: dict[str, RunDetails] = {}
        for details in sorted(history.runs.values(), key=lambda d: d.run.requested_at):
            for batch in details.run.batches:
                for name in batch:
                    last[name] = details
        checks = [
            e for _, e in sorted(history.events.items()) if e.get("type") == "releases.checked"
        ]
        return page(
            request,
            "hosts.html",
            names=sorted(last),
            live=live.rows,
            last=last,
            check=checks[-1] if checks else None,
            flags=[*history.flags, *live.flags],
        )

    @app.get("/hosts/{name:path}", response_class=HTMLResponse, include_in_schema=False)
    def host(request: Request, name: str) -> HTMLResponse:
        """One host's history: every run that had it (its outcome there), every release
        switched on it."""
        history = web.history()
        runs = [
            (d, next((h for h in d.hosts if h.host == name), None))
            for d in _newest_first(history)
            if any(name in batch for batch in d.run.batches)
        ]
        if not runs:
            raise NotFound(f"no run on record had host {name!r}")
        switches = [s for s in reversed(history.switches) if s.host == name]
        return page(
            request, "host.html", host=name, runs=runs, switches=switches, flags=history.flags
        )

    # --- metrics --------------------------------------------------------------------------------

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        from .metrics import exposition

        history = web.history()
        holders, _ = web.service("web").record.lock_holders(web.store.lock_holders())
        held = sum(len(h.names) for h in holders)
        return Response(exposition(history, held), media_type=CONTENT_TYPE_LATEST)

    # --- the audit trail ----------------------------------------------------------------------

    @app.get("/audit", response_class=HTMLResponse, include_in_schema=False)
    def audit(request: Request) -> HTMLResponse:
        from ..store.audit import verify

        started = time.monotonic()
        verified = verify(web.store.audit_events(), web.store.keys)
        history = web.history()
        return page(
            request,
            "audit.html",
            verified=verified,
            took=time.monotonic() - started,
            checkpoints=history.checkpoints,
            at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    @app.get("/audit/export", include_in_schema=False)
    def export(
        request: Request, format: str = "jsonl", run: str = "", change: str = ""
    ) -> StreamingResponse:
        from ..recorders import Auditor
        from ..store.export import export_csv, export_lines

        if format not in ("jsonl", "csv"):
            raise InputError(Problem(f"{format!r}: jsonl or csv", field="format"))
        rows = [
            r
            for r in web.store.audit_events()
            if (not run or r["run_id"] == run) and (not change or r["change_id"] == change)
        ]
        filters = {"run": run or None, "change_id": change or None}
        Auditor.outside_runs(web.store, request.state.user).append(
            "audit.exported", format=format, filters=filters, by="web"
        )

        def chunks() -> Iterator[str]:
            if format == "csv":
                yield from export_csv(iter(rows))
                return
            batch: list[str] = []
            for line in export_lines(iter(rows)):
                batch.append(line)
                if len(batch) >= 5000:
                    yield "\n".join(batch) + "\n"
                    batch = []
            if batch:
                yield "\n".join(batch) + "\n"

        name = f"runbook-exec-audit.{format}"
        return StreamingResponse(
            chunks(),
            media_type="text/csv" if format == "csv" else "application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return BodyLimit(app)


# --- acting on a run -------------------------------------------------------------------------

ACTORS = ("operator", "admin")  # roles that may approve, reject and cancel


def act(request: Request, web: Web, run_id: str, decision: str, comment: str) -> tuple[str, bool]:
    """Approve, reject or cancel (with rollback) a run, as the signed-in person or token,
    recorded under their name; then start the resume that carries the run on, when there
    is anything left to do. Returns what was decided, and whether a resume was started."""
    if request.state.role not in ACTORS:
        raise StarletteHTTPException(
            403,
            f"{request.state.user} ({request.state.role}) may not "
            "approve, reject or cancel: that needs the operator role",
        )
    comment = comment.strip()
    if not comment or len(comment) > 2000:
        raise InputError(
            Problem("say why, in 1 to 2000 characters (it is recorded)", field="comment")
        )
    with web.deciding:
        return _decided(request, web, run_id, decision, comment)


def _decided(
    request: Request, web: Web, run_id: str, decision: str, comment: str
) -> tuple[str, bool]:
    service = web.service(request.state.user)
    if decision in ("approve", "reject"):
        outcome = service.decide(run_id, decision == "approve", comment, four_eyes=True)
        carry_on = decision == "approve" or outcome.roll_back
    elif decision in ("cancel", "cancel-rollback"):
        outcome = service.cancel(run_id, comment, rollback=decision == "cancel-rollback")
        carry_on = outcome.roll_back
    else:
        raise InputError(Problem(f"{decision!r}: approve, reject or cancel", field="decision"))
    if carry_on:
        web.resume(run_id, request.state.user)
    return outcome.message, carry_on


# --- helpers --------------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the last of each name)."""
    body = await request.body()
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise InputError(Problem("the form is not UTF-8")) from None
    return {k: v[-1] for k, v in parsed.items()}


async def _checked_form(request: Request, web: Web) -> dict[str, str]:
    form = await _form(request)
    nonce = request.state.nonce
    if nonce is None or not web.sessions.csrf_ok(nonce, form.get("csrf")):
        raise StarletteHTTPException(403, "the form's CSRF token is missing or wrong")
    return form


LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9/_.~%-]*(\?[A-Za-z0-9/_.~%=&+-]*)?")


def _local(target: str) -> str:
    """Where to go after signing in: a path of this site, never another site (no `//`,
    no backslash, which browsers read as a slash, no scheme, no control characters)."""
    return target if LOCAL_PATH.fullmatch(target) else "/runs"


def _filters(query: Mapping[str, str]) -> tuple[dict[str, str], int]:
    """The runs page's filters, checked: a bad one is refused (400) naming the field."""
    filters = {name: query.get(name, "").strip() for name in FILTERS}
    for name in ("since", "until"):
        if filters[name]:
            try:
                datetime.fromisoformat(filters[name].replace("Z", "+00:00"))
            except ValueError:
                why = f"{filters[name]!r} is not a date or time (2026-11-01 or 2026-11-01T08:00)"
                raise InputError(Problem(why, field=name)) from None
    if filters["status"] and filters["status"] not in STATUSES:
        raise InputError(Problem(f"{filters['status']!r} is not a run status", field="status"))
    raw = query.get("page", "1") or "1"
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1_000_000:
        raise InputError(Problem(f"{raw!r} is not a page number", field="page"))
    return filters, int(raw)


def _epoch(text: str) -> float:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _newest_first(history: History) -> list[RunDetails]:
    return sorted(
        history.runs.values(), key=lambda d: (d.run.requested_at, d.run.event), reverse=True
    )


def _matches(details: RunDetails, f: Mapping[str, str]) -> bool:
    import fnmatch

    run = details.run
    hosts = [h for batch in run.batches for h in batch]
    return (
        (not f["runbook"] or f["runbook"].lower() in run.runbook_name.lower())
        and (not f["operator"] or run.operator == f["operator"])
        and (not f["change"] or run.change_id == f["change"])
        and (not f["host"] or any(fnmatch.fnmatchcase(h, f["host"]) for h in hosts))
        and (not f["status"] or run.status == f["status"])
        and (not f["since"] or run.requested_at >= _epoch(f["since"]))
        and (not f["until"] or run.requested_at < _epoch(f["until"]))
    )


def _grid(details: RunDetails) -> list[dict[str, Any]]:
    """Per batch: its hosts, the steps that ran, and each host-step's status."""
    names: dict[tuple[str, int], str] = {}
    cells: dict[tuple[str, str, int], Any] = {}
    for step in details.steps:
        names.setdefault((step.section, step.index), step.name)
        cells[(step.host, step.section, step.index)] = step
    columns = sorted(names, key=lambda k: (k[0] != "steps", k[1]))
    status = {h.host: h.status for h in details.hosts}
    return [
        {
            "number": number,
            "columns": [(s, i, names[(s, i)]) for s, i in columns],
            "rows": [
                (host, status.get(host, ""), [cells.get((host, s, i)) for s, i in columns])
                for host in batch
            ],
        }
        for number, batch in enumerate(details.run.batches, 1)
    ]
