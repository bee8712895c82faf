"""Release switches: which version went live where, replacing which, by which run.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("root", sa.Text, nullable=False),
        sa.Column("from_version", sa.Text),
        sa.Column("to_version", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("source", sa.String(10), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_releases_host_root", "releases", ["host", "root"])


def downgrade() -> None:
    op.drop_table("releases")
