"""job estimate and pinned gpus

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 11:40:18.978895
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("need_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("estimate", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("gpu_ids", sa.JSON(), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("gpu_ids")
        batch_op.drop_column("estimate")
        batch_op.drop_column("need_bytes")
