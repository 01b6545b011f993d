"""SQLAlchemy Core tables, compatible with Calibre-Web-Automated's ``cwa.db``.

Column names and types follow CWA's ``scripts/cwa_schema.sql`` and the ``cwa_user_activity`` table of the
CWA stats dashboard, so the exporter reads a real CWA database as it is. ``create_all`` only ever runs
``CREATE ... IF NOT EXISTS``: it never alters or drops anything in an existing database.

Two additions of ours, both optional when reading:
- ``cwa_import.source`` / ``cwa_import.method``: nullable, so the import pipeline (source -> method -> format)
  can be recorded; CWA rows without them are read with the format taken from the file name.
- ``activity_shim_drops``: events the shim had to drop, by reason, persisted once the database is writable
  again so the exporter can expose them.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, Table, Text, text
from sqlalchemy.engine import Engine

metadata = MetaData()

#: Timestamps are stored as text, ``YYYY-MM-DD HH:MM:SS`` in UTC (CWA's format).
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"

user_activity = Table(
    "cwa_user_activity",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("timestamp", Text, server_default=text("CURRENT_TIMESTAMP")),
    Column("user_id", Integer),
    Column("user_name", Text),
    Column("event_type", Text, nullable=False),
    Column("item_id", Integer),
    Column("item_title", Text),
    Column("extra_data", Text),
    Index("idx_activity_timestamp", "timestamp"),
    Index("idx_activity_user", "user_id"),
    Index("idx_activity_event", "event_type"),
    sqlite_autoincrement=True,
)

imports = Table(
    "cwa_import",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("timestamp", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("original_backed_up", Text, nullable=False),
    Column("source", Text),
    Column("method", Text),
    sqlite_autoincrement=True,
)

conversions = Table(
    "cwa_conversions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("timestamp", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("original_format", Text, nullable=False),
    Column("original_backed_up", Text, nullable=False),
    Column("end_format", Text, nullable=False, server_default=text("''")),
    sqlite_autoincrement=True,
)

enforcement = Table(
    "cwa_enforcement",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("timestamp", Text, nullable=False),
    Column("book_id", Integer, nullable=False),
    Column("book_title", Text, nullable=False),
    Column("author", Text, nullable=False),
    Column("file_path", Text, nullable=False),
    Column("trigger_type", Text, nullable=False),
    sqlite_autoincrement=True,
)

epub_fixes = Table(
    "epub_fixes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("timestamp", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("manually_triggered", Text, nullable=False),
    Column("num_of_fixes_applied", Text, nullable=False),
    Column("original_backed_up", Text, nullable=False),
    Column("file_path", Text, nullable=False),
    Column("fixes_applied", Text, server_default=text("''")),
    sqlite_autoincrement=True,
)

shim_drops = Table(
    "activity_shim_drops",
    metadata,
    Column("reason", Text, primary_key=True),
    Column("count", Integer, nullable=False, server_default=text("0")),
    Column("updated_at", Text),
)


def create_all(engine: Engine) -> None:
    """Create missing tables and indexes; existing ones are left exactly as they are."""
    metadata.create_all(engine, checkfirst=True)
