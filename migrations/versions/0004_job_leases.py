"""Running jobs are leased: jobs.owner_id + jobs.lease_expires_at (see shared.platform.jobs.claim).

Revision ID: 0004_job_leases
Revises: 0003_callbacks
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.platform.models import UTCDateTime

revision: str = "0004_job_leases"
down_revision: str | None = "0003_callbacks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("owner_id", sa.String(128), nullable=True))
        jobs.add_column(sa.Column("lease_expires_at", UTCDateTime(), nullable=True))
        jobs.create_index("ix_jobs_state_lease", ["state", "lease_expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_index("ix_jobs_state_lease")
        jobs.drop_column("lease_expires_at")
        jobs.drop_column("owner_id")
