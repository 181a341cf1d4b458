"""The schema is Alembic's: migrations build exactly what app/models.py declares.

Each test runs on SQLite and, when TEST_DATABASE_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from pprint import pformat
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event, inspect, text

from app import models
from app.db import (
    MIGRATIONS_DIR,
    Base,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    migrate,
)
from tests.conftest import drop_postgresql_schema

ROOT = Path(__file__).resolve().parent.parent
APP_TABLES = {"subscriber", "consent", "delivery"}
ADD_A_MIGRATION = (
    "app/models.py and the migrations in app/migrations/versions disagree. Add a migration "
    "(README, Development): run: alembic revision --autogenerate -m '...'\n"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database: a new SQLite file, or TEST_DATABASE_URL emptied."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'migrations.db'}"
    else:
        url = os.environ.get("TEST_DATABASE_URL", "")
        if not url.startswith("postgresql"):
            pytest.skip("TEST_DATABASE_URL is not set to PostgreSQL (CI sets it)")
    db = make_engine(url)
    if db.dialect.name == "postgresql":
        drop_postgresql_schema(db)
    try:
        yield db
    finally:
        db.dispose()


def drift(connection: Connection) -> list[Any]:
    """What autogenerate would put in a new revision: nothing when models and schema agree."""
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return compare_metadata(context, Base.metadata)


def assert_models_match(db: Engine) -> None:
    with db.connect() as connection:
        diff = drift(connection)
    assert not diff, ADD_A_MIGRATION + pformat(diff)


def schema(db: Engine) -> list[tuple[str, ...]]:
    """Everything the database says about Onward's tables, in a stable order.

    This sees what compare_metadata does not: partial-index predicates, SQLite's
    AUTOINCREMENT and unnamed constraints, sequences, PostgreSQL's storage parameters.
    """
    with db.connect() as connection:
        if db.dialect.name == "sqlite":
            rows = connection.execute(
                text("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
            )
            return sorted(
                (kind, name, table, normalize_create_table(sql or ""))
                for kind, name, table, sql in rows
                if table != "alembic_version"
            )
        queries = [
            "SELECT 'column', table_name, column_name, data_type,"
            " coalesce(character_maximum_length::text, ''), is_nullable,"
            " coalesce(column_default, '') FROM information_schema.columns"
            " WHERE table_schema = 'public'",
            "SELECT 'constraint', conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
            "SELECT 'index', tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public'",
            "SELECT 'sequence', sequencename, data_type::text, start_value::text"
            " FROM pg_sequences WHERE schemaname = 'public'",
            "SELECT 'storage', relname, coalesce(array_to_string(reloptions, ','), '')"
            " FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'",
        ]
        found = [tuple(map(str, row)) for q in queries for row in connection.execute(text(q))]
        return sorted(row for row in found if "alembic_version" not in row[1])


def normalize_create_table(sql: str) -> str:
    """A CREATE TABLE statement with its column and constraint lines in a stable order."""
    head, _, body = sql.partition("(")
    if not head.startswith("CREATE TABLE"):
        return sql
    # Split at the top-level commas: a column added by ALTER TABLE shares its line.
    items, depth, current = [], 0, ""
    for char in body.rsplit(")", 1)[0]:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    lines = sorted(" ".join(item.split()) for item in items)
    # A table rebuilt by a batch migration is renamed into place, which quotes its name.
    head = head.replace('"', "")
    return head + "(" + ", ".join(line for line in lines if line) + ")"


def ddl_recorder(db: Engine) -> list[str]:
    """Record every statement that would change the schema or the alembic_version row."""
    statements: list[str] = []
    changes = re.compile(r"^\s*(CREATE|ALTER|DROP|INSERT|UPDATE|DELETE)\b", re.IGNORECASE)

    @event.listens_for(db, "before_cursor_execute")
    def _record(*args: Any) -> None:
        statement = args[2]
        if changes.match(statement):
            statements.append(statement)

    return statements


def test_an_empty_database_upgrades_to_head_and_matches_the_models(engine: Engine) -> None:
    assert current_revision(engine) is None
    migrate(engine)
    assert current_revision(engine) == head_revision()
    assert APP_TABLES | {"alembic_version"} <= set(inspect(engine).get_table_names())
    assert_models_match(engine)


def test_the_migrations_make_exactly_what_create_all_makes(engine: Engine, tmp_path: Path) -> None:
    if engine.dialect.name == "sqlite":
        reference = make_engine(f"sqlite:///{tmp_path / 'create_all.db'}")
        Base.metadata.create_all(reference)
        expected = schema(reference)
        reference.dispose()
    else:
        Base.metadata.create_all(engine)
        expected = schema(engine)
        drop_postgresql_schema(engine)
    migrate(engine)
    migrated = schema(engine)
    assert migrated == expected, ADD_A_MIGRATION + pformat(
        {
            "only in the migrated database": sorted(set(migrated) - set(expected)),
            "only in create_all's": sorted(set(expected) - set(migrated)),
        }
    )


def test_migrating_an_up_to_date_database_changes_nothing(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    statements = ddl_recorder(engine)
    with caplog.at_level(logging.INFO, logger="alembic"):
        migrate(engine)
    assert any(s.lstrip().upper().startswith("CREATE TABLE") for s in statements)
    assert "Running upgrade" in caplog.text
    revision, tables, before = (
        current_revision(engine),
        sorted(inspect(engine).get_table_names()),
        schema(engine),
    )
    statements.clear()
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="alembic"):
        migrate(engine)

    assert statements == []
    assert "Running upgrade" not in caplog.text
    assert current_revision(engine) == revision == head_revision()
    # PostgreSQL lists tables in catalog order, which may change: compare as sets of names.
    assert sorted(inspect(engine).get_table_names()) == tables
    assert schema(engine) == before


def test_every_revision_downgrades_and_upgrades_again(engine: Engine) -> None:
    with engine.connect() as connection:
        config = alembic_config(engine.url, connection)
        revisions = list(reversed(list(ScriptDirectory.from_config(config).walk_revisions())))
        assert revisions, "app/migrations/versions holds no revision"
        for script in revisions:  # up, down, up again: one step at a time
            command.upgrade(config, script.revision)
            command.downgrade(config, "-1")
            command.upgrade(config, script.revision)
        command.downgrade(config, "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

    migrate(engine)

    assert current_revision(engine) == head_revision()
    assert_models_match(engine)


def test_a_database_made_before_alembic_is_adopted_with_its_rows(engine: Engine) -> None:
    # What `init-db` made before Onward used Alembic: the first revision's tables,
    # without an alembic_version table.
    with engine.connect() as connection:
        config = alembic_config(engine.url, connection)
        base = ScriptDirectory.from_config(config).get_base()
        assert base is not None
        command.upgrade(config, base)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(
            text(
                "INSERT INTO subscriber (key, email, first_name, status, next_step,"
                " confirmations_requested, send_failures, created_at)"
                " VALUES ('k1', 'ada@example.com', '', 'pending', 1, 1, 0, '2026-03-02')"
            )
        )
    migrate(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT email FROM subscriber")).scalars().all() == [
            "ada@example.com"
        ]
    assert_models_match(engine)


def test_a_database_with_only_some_of_the_tables_is_refused(engine: Engine) -> None:
    models.Subscriber.__table__.create(engine)
    with pytest.raises(RuntimeError, match="not consent, delivery, and no alembic_version"):
        migrate(engine)


def test_migrate_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = make_engine(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    migrate(db)
    assert current_revision(db) == head_revision()
    db.dispose()


def test_a_batch_migration_on_sqlite_keeps_the_rows_that_reference_the_table(
    tmp_path: Path,
) -> None:
    # SQLite alters `subscriber` by copying it and dropping the old table: with
    # foreign keys on, that drop would delete every consent and delivery row.
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    head = head_revision()
    (scripts / "versions" / "test_batch.py").write_text(
        f"""
import sqlalchemy as sa
from alembic import op

revision = "test_batch"
down_revision = {head!r}
branch_labels = depends_on = None


def upgrade():
    with op.batch_alter_table("subscriber", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table("subscriber", recreate="always") as batch_op:
        batch_op.drop_column("note")
"""
    )
    db = make_engine(f"sqlite:///{tmp_path / 'batch.db'}")
    migrate(db)
    with db.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO subscriber (id, key, email, first_name, status, next_step,"
                " confirmations_requested, send_failures, created_at)"
                " VALUES (1, 'k', 'ada@example.com', '', 'active', 2, 1, 0, '2026-03-02')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO consent (subscriber_id, source, wording, requested_at)"
                " VALUES (1, 'form', 'yes', '2026-03-02')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO delivery (subscriber_id, kind, number, message_id, status,"
                " attempts, started_at) VALUES (1, 'step', 1, '<m1@x>', 'sent', 1, '2026-03-02')"
            )
        )
    with db.connect() as connection:
        config = alembic_config(db.url, connection)
        config.set_main_option("script_location", str(scripts))
        command.upgrade(config, "head")
        command.downgrade(config, "-1")
        command.upgrade(config, "head")

    with db.connect() as connection:
        counts = [
            connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            for table in ("subscriber", "consent", "delivery")
        ]
        assert counts == [1, 1, 1]
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()


def test_the_alembic_command_line_uses_database_url(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    alembic = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini")]
    for args in (["upgrade", "head"], ["check"], ["current"]):
        result = subprocess.run(
            [*alembic, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert f"{head_revision()} (head)" in result.stdout
