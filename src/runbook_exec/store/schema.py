"""The tables of the state store. Changes go through a migration in `migrations/versions`."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("runbook_name", String(200), nullable=False),
    Column("runbook_path", Text, nullable=False),
    Column("runbook_sha256", String(64), nullable=False),
    Column("runbook_text", Text, nullable=False),
    Column("params", Text, nullable=False),  # JSON, secrets masked
    Column("secret_names", Text, nullable=False),  # JSON list
    Column("inventory", Text, nullable=False),  # JSON list of sources
    Column("limit_pattern", Text),
    Column("plan", Text, nullable=False),  # JSON
    Column("plan_digest", String(64), nullable=False),
    Column("options", Text, nullable=False),  # JSON: forks, timeouts, output limit
    Column("lock_name", Text, nullable=False),
    Column("operator", String(200), nullable=False),
    Column("os_user", String(200), nullable=False),
    Column("machine", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("change_id", String(200)),
    Column("reason", Text),
    Column("status", String(30), nullable=False),
    Column("message", Text),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
)

run_hosts = Table(
    "run_hosts",
    metadata,
    Column("run_id", String(40), ForeignKey("runs.id"), primary_key=True),
    Column("host", String(255), primary_key=True),
    Column("batch", Integer, nullable=False),
    Column("status", String(30), nullable=False),  # pending, active, ok, failed, rolled_back
    Column("message", Text),
)

host_steps = Table(
    "host_steps",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("run_id", String(40), ForeignKey("runs.id"), nullable=False),
    Column("batch", Integer, nullable=False),
    Column("section", String(10), nullable=False),  # steps | rollback
    Column("step_index", Integer, nullable=False),
    Column("step_name", Text, nullable=False),
    Column("host", String(255), nullable=False),
    Column("status", String(20), nullable=False),
    Column("rc", Integer),
    Column("stdout", Text),
    Column("stderr", Text),
    Column("output_bytes", BigInteger),
    Column("output_sha256", String(64)),
    Column("message", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    UniqueConstraint("run_id", "section", "step_index", "host", name="uq_host_step"),
)
Index("ix_host_steps_run", host_steps.c.run_id)

gates = Table(
    "gates",
    metadata,
    Column("run_id", String(40), ForeignKey("runs.id"), primary_key=True),
    Column("gate_key", String(60), primary_key=True),  # after:BATCH:INDEX or step:BATCH:INDEX
    Column("kind", String(10), nullable=False),  # wait | approve
    Column("message", Text),
    Column("status", String(20), nullable=False),  # waiting, approved, rejected, done
    Column("decided_by", String(200)),
    Column("comment", Text),
    Column("decided_at", Float),
)

locks = Table(
    "locks",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("run_id", String(40), nullable=False),
    Column("operator", String(200), nullable=False),
    Column("machine", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("since", Float, nullable=False),
)

releases = Table(
    "releases",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("host", String(255), nullable=False),
    Column("root", Text, nullable=False),
    Column("from_version", Text),
    Column("to_version", Text, nullable=False),
    Column("run_id", String(40), nullable=False),
    # How the target was chosen: "activate" (named), "previous" (from the record), or
    # "disk" (previous, from what was on disk); switches back are not deploys.
    Column("source", String(10), nullable=False),
    Column("at", Float, nullable=False),
)
Index("ix_releases_host_root", releases.c.host, releases.c.root)

task_results = Table(
    "task_results",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("run_id", String(40), nullable=False),
    Column("section", String(10), nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("host", String(255), nullable=False),
    Column("task", Text, nullable=False),
    Column("status", String(20), nullable=False),  # ok, changed, failed, skipped, unreachable
    Column("message", Text),
    Column("result", Text),  # the module's result as JSON, capped, secrets masked
    Column("at", Float, nullable=False),
)
Index("ix_task_results_run", task_results.c.run_id)

web_users = Table(
    "web_users",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("role", String(20), nullable=False),  # viewer, operator, admin
    Column("password_hash", Text, nullable=False),  # scrypt$n$r$p$salt$hash, hex
    Column("created_at", Float, nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("at", String(30), nullable=False),
    Column("run_id", String(40)),
    Column("type", String(40), nullable=False),
    Column("host", String(255)),
    Column("operator", String(200)),
    Column("change_id", String(200)),
    Column("body", Text, nullable=False),  # the event's canonical JSON: what is hashed
    Column("payload", Text),  # its bulky part (output), whose SHA-256 the body holds; prunable
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_run", audit_events.c.run_id)
Index("ix_audit_type", audit_events.c.type)
