"""metrics: an index on (job_id, kind, id) for a job's latest record of a kind

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 01:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # GET /jobs/{id} and GET /jobs read a job's latest metric, eval and end record on every poll: one seek
    # each with this index, where the job_id index alone scanned every record of a running job for the
    # `end` it does not have yet. It leads with job_id, so the job_id index it replaces is not needed.
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.create_index("ix_metrics_job_id_kind_id", ["job_id", "kind", "id"], unique=False)
        batch_op.drop_index(batch_op.f("ix_metrics_job_id"))


def downgrade() -> None:
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_metrics_job_id"), ["job_id"], unique=False)
        batch_op.drop_index("ix_metrics_job_id_kind_id")
