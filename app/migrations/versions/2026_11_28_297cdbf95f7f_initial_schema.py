"""Initial schema: subscriber, consent and delivery, as create_all made them before Alembic.

Generated with `alembic revision --autogenerate` against an empty database, then reviewed:
indexes are created with plain op.create_index (no table rebuild is needed on SQLite).

Revision ID: 297cdbf95f7f
Revises:
Create Date: 2026-11-28 01:05:03.498239
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "297cdbf95f7f"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subscriber",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("first_name", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("next_step", sa.Integer(), nullable=False),
        sa.Column("next_send_at", sa.DateTime(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("confirmations_requested", sa.Integer(), nullable=False),
        sa.Column("confirmation_requested_at", sa.DateTime(), nullable=True),
        sa.Column("send_failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("paused_at", sa.DateTime(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_subscriber_next_send_at", "subscriber", ["next_send_at"])
    # One live subscription per address; ended ones stay as history.
    op.create_index(
        "uq_subscriber_live_email",
        "subscriber",
        ["email"],
        unique=True,
        postgresql_where=sa.text("status NOT IN ('unsubscribed', 'bounced')"),
        sqlite_where=sa.text("status NOT IN ('unsubscribed', 'bounced')"),
    )
    op.create_table(
        "consent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("wording", sa.Text(), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(), nullable=True),
        sa.Column("confirmed_ip", sa.String(length=45), nullable=True),
        sa.Column("confirmed_user_agent", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subscriber_id"),
    )
    op.create_table(
        "delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
        sa.UniqueConstraint("subscriber_id", "kind", "number"),
    )


def downgrade() -> None:
    op.drop_table("delivery")
    op.drop_table("consent")
    op.drop_index("uq_subscriber_live_email", table_name="subscriber")
    op.drop_index("ix_subscriber_next_send_at", table_name="subscriber")
    op.drop_table("subscriber")
