"""Job-finished webhooks: jobs.callback_* (see shared.platform.webhooks).

Revision ID: 0003_callbacks
Revises: 0002_erasure
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.platform.models import UTCDateTime

revision: str = "0003_callbacks"
down_revision: str | None = "0002_erasure"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("callback_url", sa.String(2048), nullable=True))
        jobs.add_column(sa.Column("callback_attempts", sa.Integer(), nullable=False, server_default="0"))
        jobs.add_column(sa.Column("callback_next_at", UTCDateTime(), nullable=True))
        jobs.add_column(sa.Column("callback_delivered_at", UTCDateTime(), nullable=True))
        jobs.add_column(sa.Column("callback_error", sa.String(500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        for column in (
            "callback_error",
            "callback_delivered_at",
            "callback_next_at",
            "callback_attempts",
            "callback_url",
        ):
            jobs.drop_column(column)
