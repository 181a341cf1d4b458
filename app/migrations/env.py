"""Alembic's environment: runs the revisions in versions/ against one database.

The app migrates over its own engine: `app.db.migrate` hands a connection in through
``config.attributes["connection"]``. The `alembic` command line has none: it connects
to ``sqlalchemy.url`` when set, otherwise to DATABASE_URL, as the app does.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection

from app import models  # noqa: F401  (registers the tables on Base.metadata)
from app.config import Settings
from app.db import Base, UTCDateTime, make_engine

config = context.config

#: Held for the whole upgrade on PostgreSQL, so two processes never migrate at once.
PG_LOCK_KEY = 0x6F6E77617264  # "onward"


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write UTCDateTime as the DateTime it stores: revisions must not import app code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def sqlite_foreign_keys(connection: Connection, on: bool) -> bool:
    """Switch SQLite's foreign keys on or off and say whether they are on now.

    SQLite ignores the switch inside a transaction, and SQLAlchemy would begin one:
    this talks to the driver's connection directly.
    """
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    return bool(driver.execute("PRAGMA foreign_keys").fetchone()[0])


def run_migrations(connection: Connection) -> None:
    """Run the migrations over `connection`, all of them in one transaction."""
    sqlite = connection.dialect.name == "sqlite"
    # Batch mode rebuilds a table to alter it: it copies the rows, drops the old
    # table and renames the new one. With foreign keys on, dropping `subscriber`
    # would first delete every consent and delivery row (ON DELETE CASCADE).
    if sqlite and sqlite_foreign_keys(connection, on=False):
        raise RuntimeError("SQLite migrations need a connection outside any transaction")
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            # SQLite alters a table by copying it: batch_alter_table does that.
            render_as_batch=sqlite,
            # SQLite runs DDL in transactions too: a failed upgrade changes nothing.
            transactional_ddl=True,
            compare_type=True,
            compare_server_default=True,
            render_item=render_item,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_LOCK_KEY})")
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
    finally:
        if sqlite:
            sqlite_foreign_keys(connection, on=True)


def main() -> None:
    """Migrate over the connection given by the app, or connect to the configured database."""
    given: Connection | None = config.attributes.get("connection")
    if given is not None:
        run_migrations(given)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    engine = make_engine(url)
    if context.is_offline_mode():
        # `alembic upgrade head --sql`: write the SQL out instead of running it.
        context.configure(
            url=engine.url,
            target_metadata=Base.metadata,
            literal_binds=True,
            render_as_batch=engine.dialect.name == "sqlite",
            transactional_ddl=True,
            dialect_opts={"paramstyle": "named"},
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    try:
        with engine.connect() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


main()
