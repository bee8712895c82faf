"""Runs, their hosts and host-steps, gates, and locks.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("runbook_name", sa.String(200), nullable=False),
        sa.Column("runbook_path", sa.Text, nullable=False),
        sa.Column("runbook_sha256", sa.String(64), nullable=False),
        sa.Column("runbook_text", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("secret_names", sa.Text, nullable=False),
        sa.Column("inventory", sa.Text, nullable=False),
        sa.Column("limit_pattern", sa.Text),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("plan_digest", sa.String(64), nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("lock_name", sa.Text, nullable=False),
        sa.Column("operator", sa.String(200), nullable=False),
        sa.Column("os_user", sa.String(200), nullable=False),
        sa.Column("machine", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("change_id", sa.String(200)),
        sa.Column("reason", sa.Text),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
    )
    op.create_table(
        "run_hosts",
        sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("batch", sa.Integer, nullable=False),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("message", sa.Text),
    )
    op.create_table(
        "host_steps",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("batch", sa.Integer, nullable=False),
        sa.Column("section", sa.String(10), nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("step_name", sa.Text, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("rc", sa.Integer),
        sa.Column("stdout", sa.Text),
        sa.Column("stderr", sa.Text),
        sa.Column("output_bytes", sa.BigInteger),
        sa.Column("output_sha256", sa.String(64)),
        sa.Column("message", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.UniqueConstraint("run_id", "section", "step_index", "host", name="uq_host_step"),
    )
    op.create_index("ix_host_steps_run", "host_steps", ["run_id"])
    op.create_table(
        "gates",
        sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("gate_key", sa.String(60), primary_key=True),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("decided_by", sa.String(200)),
        sa.Column("comment", sa.Text),
        sa.Column("decided_at", sa.Float),
    )
    op.create_table(
        "locks",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("operator", sa.String(200), nullable=False),
        sa.Column("machine", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("since", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("locks", "gates", "host_steps", "run_hosts", "runs"):
        op.drop_table(table)
