"""stall watch and heartbeat

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # When the daemon last read a record of the attempt, and the usual time between its records: a worker
    # that stops writing for several of those intervals shows as stalled.
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_record_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("record_interval_s", sa.Float(), nullable=True))

    # One row the daemon rewrites every few seconds: proof for /healthz that the database can still be written.
    op.create_table(
        "daemon",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("daemon")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("record_interval_s")
        batch_op.drop_column("last_record_at")
