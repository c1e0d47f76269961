"""Engines on the recommendations database: SQLite (the embedded default) or PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from recjobs.errors import DatabaseError
from recjobs.settings import database_url_problem, mask_url


def normalize_url(url: str) -> str:
    """Prefer psycopg 3 for PostgreSQL URLs that name no driver (it has COPY support)."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def libpq_uri(url: str) -> str:
    """The libpq connection URI (``postgresql://...``, as ADBC takes) of a SQLAlchemy PostgreSQL URL.

    The result carries the password: pass it to a driver, never to a log or a message
    (show :func:`sqlalchemy.engine.URL.render_as_string` with the password hidden instead).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    # SQLAlchemy percent-encodes the user and password, and libpq URIs decode them.
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and real transactions.

    A URL that is malformed, names an unknown dialect or a driver that is not installed
    raises :class:`~recjobs.errors.DatabaseError` naming it with its password masked
    (URLs from the settings were checked when loaded; this covers an Airflow connection's).
    """
    problem = database_url_problem(url)
    if problem:
        raise DatabaseError(f"database URL {mask_url(url)} {problem}")
    url = normalize_url(url)
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"timeout": 60})
            _configure_sqlite(engine)
            return engine
        return sa.create_engine(url, pool_pre_ping=True)
    except (ImportError, sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        # `from None`: the cause's message may quote the URL, password included.
        raise DatabaseError(f"database URL {mask_url(url)}: cannot load its driver: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling skips BEGIN before DDL, which would let a
    # reader observe a half-done swap; take control of BEGIN ourselves.
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        mode = "IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def write_tx(engine: Engine):  # noqa: ANN201 - a context manager of Connection
    """A write transaction; on SQLite it takes the write lock at BEGIN (``BEGIN IMMEDIATE``),
    so a swap cannot fail half-way on a busy lock."""
    return engine.execution_options(sqlite_immediate=True).begin()


def is_sqlite(conn: sa.Connection | Engine) -> bool:
    """Whether ``conn`` (or an engine) talks to SQLite."""
    return conn.dialect.name == "sqlite"
