"""attempt settings, resume and retries

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 12:01:13.020970
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before this migration get the defaults a new row has.
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("settings", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("resumed_from_step", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("adopted", sa.Boolean(), nullable=False, server_default=sa.false()))

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("oom_retries", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("tried", sa.JSON(), nullable=False, server_default="[]"))

    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("superseded", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index(batch_op.f("ix_metrics_superseded"), ["superseded"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_metrics_superseded"))
        batch_op.drop_column("superseded")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("tried")
        batch_op.drop_column("oom_retries")

    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("adopted")
        batch_op.drop_column("resumed_from_step")
        batch_op.drop_column("settings")
