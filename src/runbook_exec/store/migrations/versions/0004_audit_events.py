"""The audit trail: one hash chain of events, in order of `seq`.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("at", sa.String(30), nullable=False),
        sa.Column("run_id", sa.String(40)),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("operator", sa.String(200)),
        sa.Column("change_id", sa.String(200)),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_run", "audit_events", ["run_id"])


def downgrade() -> None:
    op.drop_table("audit_events")
