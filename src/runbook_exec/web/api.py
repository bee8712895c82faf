"""The JSON API under `/api/v1`, for scripts (a bearer token from `tokens create`, or a
signed-in browser): runs (filtered, paged), a run as `show --json` gives it, its
host-steps, a range of lines of one host-step's output, what is live where, and the audit
chain's status. Its OpenAPI document is `/api/v1/openapi.json`. Reads go through the
record; what it cannot verify comes back in `flags`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ..jsonout import SCHEMA

if TYPE_CHECKING:
    from . import Web

MAX_LINES = 5000
# The run statuses (as web.STATUSES lists them), or "" for any.
StatusFilter = Literal[
    "", "pending", "running", "awaiting_approval", "succeeded", "failed", "rolled_back",
    "rollback_failed", "rejected", "cancelled", "interrupted", "refused",
]  # fmt: skip


class RunSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    run_id: str
    runbook: str
    operator: str
    change_id: str | None
    status: str
    started: str | None
    duration_s: float | None
    verified: bool
    flags: list[str]
    event: int


class RunsPage(BaseModel):
    schema_: int = Field(SCHEMA, alias="schema", serialization_alias="schema")
    runs: list[RunSummary]
    total: int
    page: int
    pages: int
    flags: list[str]


class Run(BaseModel):
    """A run as `show --json` gives it (without outputs)."""

    model_config = ConfigDict(extra="allow")

    schema_: int = Field(SCHEMA, alias="schema", serialization_alias="schema")
    run_id: str
    status: str
    hosts: list[dict[str, Any]]
    host_steps: list[dict[str, Any]]
    flags: list[str]


class HostSteps(BaseModel):
    schema_: int = Field(SCHEMA, alias="schema", serialization_alias="schema")
    host_steps: list[dict[str, Any]]


class OutputLines(BaseModel):
    schema_: int = Field(SCHEMA, alias="schema", serialization_alias="schema")
    stream: str
    start: int
    lines: list[str]
    total: int
    kept: str  # kept | pruned | missing | none (as the record says)


class Releases(BaseModel):
    schema_: int = Field(SCHEMA, alias="schema", serialization_alias="schema")
    releases: list[dict[str, Any]]
    flags: list[str]


class AuditStatus(BaseModel):
    schema_: int = Field(SCHEMA, alias="schema", serialization_alias="schema")
    intact: bool
    finding: str | None
    events: int
    last_verified_seq: int
    keys: list[str]
    checkpoints: list[int]


class Decide(BaseModel):
    """Why (recorded with the decision), and for a cancel whether to roll back."""

    comment: str = Field(min_length=1, max_length=2000)
    rollback: bool = False


class Decided(BaseModel):
    schema_: int = Field(SCHEMA, alias="schema", serialization_alias="schema")
    run_id: str
    message: str
    resumed: bool


class Problem(BaseModel):
    error: str
    field: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem},
    401: {"model": Problem},
    403: {"model": Problem},
    404: {"model": Problem},
    409: {"model": Problem},
}


def router(web: Web) -> APIRouter:
    from . import _filters, _matches, _newest_first

    api = APIRouter(prefix="/api/v1", responses=ERRORS)

    @api.get("/runs", response_model=RunsPage, response_model_by_alias=True)
    def runs(
        runbook: str = "",
        operator: str = "",
        change: str = "",
        host: str = "",
        status: StatusFilter = "",
        since: Annotated[datetime | None, Query(description="Requested from (RFC 3339).")] = None,
        until: Annotated[datetime | None, Query(description="Requested before (RFC 3339).")] = None,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        per_page: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Runs, newest first; the filters as on the runs page."""
        from ..views import run_summary

        query = {"runbook": runbook, "operator": operator, "change": change, "host": host}
        query |= {"status": status, "since": _iso(since), "until": _iso(until), "page": str(page)}
        filters, number = _filters(query)
        history = web.history()
        matching = [d for d in _newest_first(history) if _matches(d, filters)]
        shown = matching[(number - 1) * per_page : number * per_page]
        return {
            "schema": SCHEMA,
            "runs": [run_summary(d) for d in shown],
            "total": len(matching),
            "page": number,
            "pages": max(1, -(-len(matching) // per_page)),
            "flags": [str(f) for f in history.flags],
        }

    @api.get("/runs/{run_id}", response_model=Run, response_model_by_alias=True)
    def run(request: Request, run_id: str) -> dict[str, Any]:
        """A run from its verified events, as `runbook-exec show --json` prints it."""
        from ..views import run_json

        details = web.service(request.state.user).run(run_id, outputs=False)
        return {"schema": SCHEMA, **run_json(details)}

    @api.get("/runs/{run_id}/host-steps", response_model=HostSteps, response_model_by_alias=True)
    def host_steps(request: Request, run_id: str) -> dict[str, Any]:
        """Every host-step of a run (without output)."""
        details = web.service(request.state.user).run(run_id, outputs=False)
        return {"schema": SCHEMA, "host_steps": [s.to_dict() for s in details.steps]}

    @api.get("/runs/{run_id}/output", response_model=OutputLines, response_model_by_alias=True)
    def output(
        request: Request,
        run_id: str,
        host: str,
        section: Literal["steps", "rollback"] = "steps",
        index: Annotated[int, Query(ge=0, le=10_000)] = 0,
        stream: Literal["stdout", "stderr"] = "stdout",
        start: Annotated[int, Query(ge=0, le=100_000_000)] = 0,
        count: Annotated[int, Query(ge=1, le=MAX_LINES)] = 500,
    ) -> dict[str, Any]:
        """Lines [start, start + count) of one host-step's stdout or stderr, as kept."""
        step, lines, _ = web.output_lines(
            request.state.user, run_id, (section, index, host), stream
        )
        return {
            "schema": SCHEMA,
            "stream": stream,
            "start": start,
            "lines": lines[start : start + count],
            "total": len(lines),
            "kept": step.output,
        }

    @api.get("/releases", response_model=Releases, response_model_by_alias=True)
    def releases(request: Request) -> dict[str, Any]:
        """What is live where, from the record of every release switch."""
        live = web.service(request.state.user).releases()
        return {
            "schema": SCHEMA,
            "releases": [r.to_dict() for r in live.rows],
            "flags": [str(f) for f in live.flags],
        }

    @api.get("/audit", response_model=AuditStatus, response_model_by_alias=True)
    def audit() -> dict[str, Any]:
        """The audit chain, verified now: whole or not, and how far."""
        from ..store.audit import verify

        verified = verify(web.store.audit_events(), web.store.keys)
        history = web.history()
        return {
            "schema": SCHEMA,
            "intact": verified.finding is None,
            "finding": None if verified.finding is None else str(verified.finding),
            "events": verified.count if verified.finding else history.head,
            "last_verified_seq": verified.last_seq,
            "keys": verified.key_ids,
            "checkpoints": [seq for seq, _ in history.checkpoints],
        }

    def decided(request: Request, run_id: str, decision: str, body: Decide) -> dict[str, Any]:
        from . import act

        message, resumed = act(request, web, run_id, decision, body.comment)
        return {"schema": SCHEMA, "run_id": run_id, "message": message, "resumed": resumed}

    @api.post("/runs/{run_id}/approve", response_model=Decided, response_model_by_alias=True)
    def approve(request: Request, run_id: str, body: Decide) -> dict[str, Any]:
        """Approve the gate the run waits at (operator role; not the run's starter unless
        its runbook's `approvers:` name them); the run is then carried on."""
        return decided(request, run_id, "approve", body)

    @api.post("/runs/{run_id}/reject", response_model=Decided, response_model_by_alias=True)
    def reject(request: Request, run_id: str, body: Decide) -> dict[str, Any]:
        """Reject the gate the run waits at: it ends through its `on_failure`."""
        return decided(request, run_id, "reject", body)

    @api.post("/runs/{run_id}/cancel", response_model=Decided, response_model_by_alias=True)
    def cancel(request: Request, run_id: str, body: Decide) -> dict[str, Any]:
        """Cancel a waiting or interrupted run (with `rollback`: its rollback steps run)."""
        return decided(request, run_id, "cancel-rollback" if body.rollback else "cancel", body)

    return api


def _iso(at: datetime | None) -> str:
    """A parsed time as the runs filter takes it (a time without a zone is UTC)."""
    if at is None:
        return ""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()
