"""Subscriber pages keep room for updated rows (fillfactor 90) on PostgreSQL.

A claim changes only `claimed_until`, which no index holds: with free room on the
row's page PostgreSQL updates it in place (a HOT update) instead of writing a new
entry into each of the table's indexes. The setting governs pages written from now
on; `VACUUM FULL subscriber` (it locks the table) applies it to existing ones.

Revision ID: e8b3d5a1f6c2
Revises: c4a1e7f2b9d0
Create Date: 2026-12-04 20:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "e8b3d5a1f6c2"
down_revision: str | Sequence[str] | None = "c4a1e7f2b9d0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE subscriber SET (fillfactor = 90)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE subscriber RESET (fillfactor)")
