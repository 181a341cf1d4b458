"""The ledger marks the moment an email's final "." is about to go to the relay.

Revision ID: e5b7d1c3a9f2
Revises: e8b3d5a1f6c2
Create Date: 2026-12-04 20:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5b7d1c3a9f2"
down_revision: str | Sequence[str] | None = "e8b3d5a1f6c2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: PostgreSQL adds it without rewriting the table.
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(sa.Column("handed_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.drop_column("handed_at")
