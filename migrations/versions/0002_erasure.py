"""Erasure of media: jobs.media_deleted_at, assets.deleted_at (see shared.platform.erasure).

Revision ID: 0002_erasure
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.platform.models import UTCDateTime

revision: str = "0002_erasure"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("media_deleted_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table("assets") as assets:
        assets.add_column(sa.Column("deleted_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("assets") as assets:
        assets.drop_column("deleted_at")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("media_deleted_at")
