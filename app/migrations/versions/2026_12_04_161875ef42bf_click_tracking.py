"""Optional click tracking: counts per email and link, and (per-person only) who clicked.

Revision ID: 161875ef42bf
Revises: 7c4e2a91d5f3
Create Date: 2026-12-04 17:05:22.403452
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "161875ef42bf"
down_revision: str | Sequence[str] | None = "7c4e2a91d5f3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "link_clicks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False),
        sa.Column("link", sa.String(length=500), nullable=False),
        sa.Column("clicks", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("template", "link"),
    )
    op.create_table(
        "click",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False),
        sa.Column("link", sa.String(length=500), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("click", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_click_subscriber_id"), ["subscriber_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("click", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_click_subscriber_id"))

    op.drop_table("click")
    op.drop_table("link_clicks")
