"""List hygiene: the suppression list, mail events (bounces, complaints, deliveries),
confirmation caps per mailbox, and when a delivery was reported delivered.


Revision ID: 498d5c92f8c0
Revises: 5d1e0c7a9b31
Create Date: 2026-11-29 12:09:19.620361
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "498d5c92f8c0"
down_revision: str | Sequence[str] | None = "5d1e0c7a9b31"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "confirmation_count",
        sa.Column("mailbox_hash", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("mailbox_hash", "day"),
    )
    op.create_table(
        "mail_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("mailbox_hash", sa.String(length=64), nullable=True),
        sa.Column("template", sa.String(length=32), nullable=True),
        sa.Column("occurred_at", sa.DateTime(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source", "event_id"),
    )
    op.create_index("ix_mail_event_mailbox_kind", "mail_event", ["mailbox_hash", "kind"])
    op.create_index("ix_mail_event_occurred_at", "mail_event", ["occurred_at"])

    op.create_table(
        "suppression",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_hash", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("suppressed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mailbox_hash"),
    )
    # A table rebuild on SQLite, so the table reads as create_all would make it.
    with op.batch_alter_table("delivery", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("delivered_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("delivered_at")

    op.drop_table("suppression")
    op.drop_index("ix_mail_event_occurred_at", table_name="mail_event")
    op.drop_index("ix_mail_event_mailbox_kind", table_name="mail_event")
    op.drop_table("mail_event")
    op.drop_table("confirmation_count")
