"""An index on audit events' type: the key events (which key hashes which part of the
chain) and the prune events are looked up by it.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_index("ix_audit_type", "audit_events", ["type"])


def downgrade() -> None:
    op.drop_index("ix_audit_type", "audit_events")
