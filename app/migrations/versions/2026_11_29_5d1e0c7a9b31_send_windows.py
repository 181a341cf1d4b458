"""Send windows: the subscriber's time zone, when the next step may go, timed pauses, rounds.

Revision ID: 5d1e0c7a9b31
Revises: 297cdbf95f7f
Create Date: 2026-11-29 12:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5d1e0c7a9b31"
down_revision: str | Sequence[str] | None = "297cdbf95f7f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("subscriber", sa.Column("time_zone", sa.String(length=64), nullable=True))
    op.add_column("subscriber", sa.Column("due_after", sa.DateTime(), nullable=True))
    op.add_column("subscriber", sa.Column("resume_at", sa.DateTime(), nullable=True))
    op.add_column(
        "subscriber",
        sa.Column("course_round", sa.Integer(), server_default="1", nullable=False),
    )
    op.create_index("ix_subscriber_resume_at", "subscriber", ["resume_at"])


def downgrade() -> None:
    op.drop_index("ix_subscriber_resume_at", table_name="subscriber")
    with op.batch_alter_table("subscriber") as batch:
        batch.drop_column("course_round")
        batch.drop_column("resume_at")
        batch.drop_column("due_after")
        batch.drop_column("time_zone")
