"""Ansible task results: every task of a playbook or module step, on every host.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "task_results",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("section", sa.String(10), nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("result", sa.Text),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_task_results_run", "task_results", ["run_id"])


def downgrade() -> None:
    op.drop_table("task_results")
