"""The Alembic migration environment and revisions (see README, Development)."""
