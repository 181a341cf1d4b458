"""The operator's console: operators, their sessions, the audit log, the console's indexes.

Also each ledger row's failure class, which the console's problems page groups by.

Revision ID: bd56bcdd1e89
Revises: 498d5c92f8c0
Create Date: 2026-11-29 12:09:39.888256
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "bd56bcdd1e89"
down_revision: str | Sequence[str] | None = "498d5c92f8c0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "operator",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    op.create_table(
        "operator_session",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("operator_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["operator_id"], ["operator.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "audit_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("operator_email", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_entry_subscriber_id", "audit_entry", ["subscriber_id"])
    op.add_column("delivery", sa.Column("failure_class", sa.String(length=24), nullable=True))
    op.create_index("ix_delivery_sent_at", "delivery", ["sent_at"])
    op.create_index("ix_delivery_status_kind_number", "delivery", ["status", "kind", "number"])
    op.create_index("ix_subscriber_email", "subscriber", ["email"])
    op.create_index("ix_subscriber_status_next_step", "subscriber", ["status", "next_step"])


def downgrade() -> None:
    op.drop_index("ix_subscriber_status_next_step", table_name="subscriber")
    op.drop_index("ix_subscriber_email", table_name="subscriber")
    op.drop_index("ix_delivery_status_kind_number", table_name="delivery")
    op.drop_index("ix_delivery_sent_at", table_name="delivery")
    with op.batch_alter_table("delivery") as batch_op:
        batch_op.drop_column("failure_class")
    op.drop_index("ix_audit_entry_subscriber_id", table_name="audit_entry")
    op.drop_table("audit_entry")
    op.drop_table("operator_session")
    op.drop_table("operator")
