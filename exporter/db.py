"""Engines for the activity store: SQLite paths or SQLAlchemy URLs, writable or read-only."""

from __future__ import annotations

import os
from urllib.parse import quote

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

# SQLAlchemy is imported where an engine is made: the SQLite-only helper process (activity_reader) opens
# files with ``sqlite_readonly`` and stays 24 MB smaller without it.

DEFAULT_BUSY_TIMEOUT_MS = 5000


def to_url(url_or_path: str) -> str:
    """Accept a SQLAlchemy URL or a plain file path (taken as SQLite)."""
    if "://" in url_or_path:
        if url_or_path.startswith("postgresql://") or url_or_path.startswith("postgres://"):
            # psycopg 3 is the driver we ship; SQLAlchemy's bare postgresql:// means psycopg2.
            return "postgresql+psycopg://" + url_or_path.split("://", 1)[1]
        return url_or_path
    return "sqlite:///" + os.path.abspath(url_or_path)


def is_sqlite(url: str) -> bool:
    return to_url(url).startswith("sqlite")


def sqlite_path(url: str) -> str | None:
    """The file path of a SQLite URL, or None for other databases and in-memory SQLite."""
    url = to_url(url)
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    return path or None


def _sqlite_pragmas(busy_timeout_ms: int, wal: bool):
    def on_connect(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if wal:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    return on_connect


def writer_engine(url_or_path: str, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Engine:
    """An engine for writing events: SQLite in WAL mode with a busy timeout; PostgreSQL pooled."""
    from sqlalchemy import create_engine, event

    url = to_url(url_or_path)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000})
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_ms, wal=True))
        return engine
    return create_engine(url, pool_pre_ping=True)


def reader_engine(url_or_path: str, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Engine:
    """A read-only engine: SQLite opened with ``mode=ro`` (never creates or changes the file)."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    url = to_url(url_or_path)
    if sqlite_path(url) is not None:
        # No pooling: each refresh opens the file anew, so a deleted or replaced database is noticed.
        return create_engine("sqlite://", creator=lambda: sqlite_readonly(url, busy_timeout_ms), poolclass=NullPool)
    engine = create_engine(url, pool_pre_ping=True)

    @event.listens_for(engine, "connect")
    def _readonly(dbapi_conn, _record):  # pragma: no cover - exercised in PostgreSQL tests
        dbapi_conn.read_only = True
        dbapi_conn.autocommit = False

    return engine


def sqlite_readonly(url_or_path: str, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS):
    """A plain ``sqlite3`` connection to a SQLite file opened with ``mode=ro``."""
    import sqlite3

    uri = "file:" + quote(sqlite_path(url_or_path)) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return conn
