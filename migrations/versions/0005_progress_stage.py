"""Job progress stage and ETA: jobs.progress_stage, jobs.progress_eta_s (see shared.platform.jobs).

Revision ID: 0005_progress_stage
Revises: 0004_job_leases
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_progress_stage"
down_revision: str | None = "0004_job_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("progress_stage", sa.String(32), nullable=True))
        jobs.add_column(sa.Column("progress_eta_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("progress_eta_s")
        jobs.drop_column("progress_stage")
