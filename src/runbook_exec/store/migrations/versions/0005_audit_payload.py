"""Audit payloads: an event's bulky output beside its body, prunable without breaking the
chain (the body keeps the payload's SHA-256).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as table:
        table.add_column(sa.Column("payload", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as table:
        table.drop_column("payload")
