"""Database engine, sessions, the UTC datetime column type and schema migrations."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Connection,
    DateTime,
    Engine,
    String,
    bindparam,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql import coercions, roles
from sqlalchemy.sql._typing import _ColumnExpressionArgument
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal, _TraverseInternalsType
from sqlalchemy.types import TypeDecorator, TypeEngine

if TYPE_CHECKING:
    from alembic.config import Config

#: Alembic's environment and revisions (see README, Development).
MIGRATIONS_DIR = Path(__file__).with_name("migrations")

#: The tables `create_all` made before Onward used Alembic. The first revision makes
#: the very same: `migrate` marks such a database as being at it, then upgrades it.
PRE_ALEMBIC_TABLES = frozenset({"subscriber", "consent", "delivery"})


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC on every backend and always hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given: Onward stores aware UTC datetimes only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class ValueList(TypeDecorator[Sequence[Any]]):
    """A list of values of one column's type bound as one parameter: an array on
    PostgreSQL, JSON text elsewhere (read back with SQLite's json_each)."""

    impl = String
    cache_ok = True

    def __init__(self, item: TypeEngine[Any]) -> None:
        super().__init__()
        self.item = item

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(ARRAY(self.item))
        return dialect.type_descriptor(String())

    def process_bind_param(self, value: Sequence[Any] | None, dialect: Dialect) -> Any:
        # Enum members as their values: the columns hold those.
        values = [item.value if isinstance(item, Enum) else item for item in value or ()]
        if dialect.name == "postgresql":
            return values  # the array type binds each item as its column type does
        process = self.item.dialect_impl(dialect).bind_processor(dialect)
        return json.dumps(values if process is None else [process(item) for item in values])


class OneOf(ColumnElement[bool]):
    """A column, or a row of columns, is one of a list, in a statement whose text does
    not depend on the list's length (see `one_of`)."""

    inherit_cache = True
    type = Boolean()
    # A comparison, not a boolean column: SQLite needs no "= 1" after it.
    _is_implicitly_boolean = True
    _traverse_internals: _TraverseInternalsType = [  # noqa: RUF012 (SQLAlchemy's own form)
        ("columns", InternalTraversal.dp_clauseelement_list),
        ("lists", InternalTraversal.dp_clauseelement_list),
    ]

    def __init__(
        self, columns: Sequence[_ColumnExpressionArgument[Any]], lists: Sequence[Sequence[Any]]
    ) -> None:
        self.columns: list[ColumnElement[Any]] = [
            coercions.expect(roles.ExpressionElementRole, column) for column in columns
        ]
        self.lists: list[BindParameter[Sequence[Any]]] = [
            bindparam(None, list(values), type_=ValueList(column.type))
            for column, values in zip(self.columns, lists, strict=True)
        ]


def one_of(column: _ColumnExpressionArgument[Any], values: Sequence[Any]) -> OneOf:
    """`column IN values`, with the list bound as one parameter.

    `IN (...)` writes one placeholder per value: a statement of a new length for
    every list, which the driver parses again each time (a hundred ids cost the
    PostgreSQL driver about a millisecond) and the server plans again each time.
    """
    return OneOf([column], [values])


def row_one_of(
    columns: Sequence[_ColumnExpressionArgument[Any]], rows: Sequence[Sequence[Any]]
) -> OneOf:
    """`(column, ...) IN rows`, bound as one parameter per column (see `one_of`)."""
    lists = [list(values) for values in zip(*rows, strict=True)] if rows else [[] for _ in columns]
    return OneOf(columns, lists)


@compiles(OneOf)
def _one_of(element: OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite: json_each reads each list; a row's values share their index ("key").
    columns = [compiler.process(column, **kw) for column in element.columns]
    lists = [compiler.process(values, **kw) for values in element.lists]
    if len(columns) == 1:
        return f"{columns[0]} IN (SELECT value FROM json_each({lists[0]}))"
    joined = " ".join(
        f"JOIN json_each({values}) AS v{n} ON v{n}.key = v0.key"
        for n, values in enumerate(lists[1:], start=1)
    )
    chosen = ", ".join(f"v{n}.value" for n in range(len(lists)))
    return f"({', '.join(columns)}) IN (SELECT {chosen} FROM json_each({lists[0]}) AS v0 {joined})"


@compiles(OneOf, "postgresql")
def _one_of_postgresql(element: OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    columns = [compiler.process(column, **kw) for column in element.columns]
    lists = [compiler.process(values, **kw) for values in element.lists]
    if len(columns) == 1:
        return f"{columns[0]} = ANY({lists[0]})"
    return f"({', '.join(columns)}) IN (SELECT * FROM unnest({', '.join(lists)}))"


class Base(DeclarativeBase):
    """Declarative base of every model."""


def make_engine(database_url: str) -> Engine:
    """An engine for `database_url`; SQLite gets WAL, a busy timeout and its folder created."""
    url = make_url(database_url)
    if url.drivername in {"postgres", "postgresql"}:
        # Plain postgresql:// URLs (as operators write them) use psycopg 3.
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        # Create the folder if we can; if not, connecting fails with a clear
        # database error (which the web app answers with 503), not an OSError.
        with suppress(OSError):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None hands transaction control to the "begin" hook below.
    engine = create_engine(url, connect_args={"timeout": 30, "isolation_level": None})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets the web read while a worker writes; the busy timeout makes
        # concurrent writers wait their turn instead of failing at once.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that reads and
        # then writes fails at once under concurrency instead of waiting.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: URL | str | None = None, connection: Connection | None = None) -> Config:
    """Alembic's configuration for the migrations in app/migrations, from any folder.

    The migrations run over `connection` when given (app/migrations/env.py), otherwise
    over a new engine for `url`, otherwise for DATABASE_URL.
    """
    # Alembic (with Mako) is imported here, not at the top: only the processes that
    # migrate need it, and a sending worker would carry ~70 modules it never uses.
    from alembic.config import Config

    config = Config()
    # Config options are interpolated: a literal % is written %%.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        if isinstance(url, URL):
            url = url.render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Bring the database to the latest revision; a no-op when it is already there."""
    from alembic import command
    from alembic.script import ScriptDirectory

    with engine.connect() as connection:
        config = alembic_config(engine.url, connection)
        if _made_before_alembic(connection):
            first = ScriptDirectory.from_config(config).get_base()
            assert first is not None, "app/migrations/versions holds no revision"
            command.stamp(config, first)
        command.upgrade(config, "head")


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database Alembic never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The latest revision in app/migrations/versions."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _made_before_alembic(connection: Connection) -> bool:
    """Whether the tables are those `create_all` made before Alembic, with no revision."""
    tables = set(inspect(connection).get_table_names())
    connection.rollback()  # inspecting began a transaction: Alembic runs its own
    if "alembic_version" in tables or not tables & PRE_ALEMBIC_TABLES:
        return False
    if tables >= PRE_ALEMBIC_TABLES:
        return True
    missing = ", ".join(sorted(PRE_ALEMBIC_TABLES - tables))
    raise RuntimeError(
        f"the database has some of Onward's tables but not {missing}, and no "
        "alembic_version table: empty it or complete it by hand, then migrate"
    )


@contextmanager
def session_scope(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
