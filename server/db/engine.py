"""The database: an engine per settings, a session dependency, and the upgrade at start.

SQLite runs in WAL mode with a busy timeout and foreign keys on, because the API's
threads and the scheduler's thread write to it at the same time. The pool keeps a
connection for each of those threads: a connection opened per request costs more than
the request (the PRAGMAs below run on every connect).

Two patiences: the daemon's own writes (the scheduler's, the watchers') wait up to
BUSY_TIMEOUT_MS for the write lock, since an outcome they fail to write would have to be
decided again; a request's session (`request_session`) waits API_BUSY_TIMEOUT_MS, so that
a database locked by another process (a backup, a `sqlite3` shell holding a transaction)
answers 503 with Retry-After within seconds instead of holding the client for half a minute.
A writer of the daemon's own holds the lock for milliseconds, far below either.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, create_engine

from server.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


# The scheduler's thread, and one to spare (a thread of the daemon's own beside it).
DAEMON_CONNECTIONS = 2
READ_SNAPSHOT = "ftq_read_snapshot"
BUSY_TIMEOUT_MS = 30_000
API_BUSY_TIMEOUT_MS = 3_000
_PATIENCE = "ftq_busy_timeout_ms"


def pool_size(settings: Settings) -> int:
    """Connections kept open: one for each API thread, and the scheduler's."""
    return settings.api_threads + DAEMON_CONNECTIONS


def make_engine(settings: Settings) -> Engine:
    url = settings.resolved_database_url
    # No limit on the connections opened beyond the pool: a request keeps its connection from its
    # first query (in a dependency's thread) to its end, so more requests in flight than threads may
    # hold more connections than the pool has; waiting for one while holding a thread could deadlock.
    pool = {"pool_size": pool_size(settings), "max_overflow": -1}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "checkin", _patient_again)
        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _patient_again(dbapi_connection: Any, record: Any) -> None:
    """A connection a request made impatient goes back to the pool with the daemon's patience."""
    if record.info.pop(_PATIENCE, None) is not None and dbapi_connection is not None:
        dbapi_connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def request_session(engine: Engine) -> Session:
    """A request's session: its writes wait at most API_BUSY_TIMEOUT_MS for the lock, then fail as locked (a 503)."""
    return Session(engine, info={_PATIENCE: API_BUSY_TIMEOUT_MS})


def read_snapshot(session: Session) -> None:
    """Let every read of this session see the database as one moment: one transaction, from its first query.

    For the routes that only read, and read several statements (a job, its attempts, its records), so
    that a write committed between two of them is seen by all or by none. Never for a session that
    writes: a transaction that began reading cannot take the write lock once another writer committed
    (SQLite's SQLITE_BUSY_SNAPSHOT, which no busy timeout waits out). SQLite only; other databases
    read at their default isolation.
    """
    if session.in_transaction():
        raise RuntimeError("read_snapshot must come before the session's first query")
    session.info[READ_SNAPSHOT] = True


@event.listens_for(Session, "after_begin")
def _begin_snapshot(session: Session, _transaction: Any, connection: Connection) -> None:
    if connection.dialect.name != "sqlite":
        return
    patience = session.info.get(_PATIENCE)
    if patience is not None and connection.info.get(_PATIENCE) != patience:
        connection.exec_driver_sql(f"PRAGMA busy_timeout={int(patience)}")
        connection.info[_PATIENCE] = patience  # restored when the connection goes back (_patient_again)
    # pysqlite begins a transaction only before a write: each SELECT would otherwise see its own moment.
    if session.info.get(READ_SNAPSHOT):
        connection.exec_driver_sql("BEGIN")


def upgrade_database(engine: Engine) -> None:
    """Bring the schema to the newest migration; the daemon does this itself at start."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session
