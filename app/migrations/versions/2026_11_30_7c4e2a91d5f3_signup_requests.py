"""Sign-up requests: each sign-up's intent, recorded before anything is decided about it.

Revision ID: 7c4e2a91d5f3
Revises: bd56bcdd1e89
Create Date: 2026-11-30 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c4e2a91d5f3"
down_revision: str | Sequence[str] | None = "bd56bcdd1e89"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signup_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("first_name", sa.String(length=100), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("wording", sa.Text(), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("processed_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=24), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_signup_request_email", "signup_request", ["email"])
    op.create_index("ix_signup_request_processed_at", "signup_request", ["processed_at"])


def downgrade() -> None:
    op.drop_index("ix_signup_request_processed_at", table_name="signup_request")
    op.drop_index("ix_signup_request_email", table_name="signup_request")
    op.drop_table("signup_request")
