"""Fast generation of large CWA activity databases inside SQLite itself (a recursive CTE, no Python loop)."""

from __future__ import annotations

import os
import sqlite3
import time

from exporter import db, schema

EVENT_TYPES = ["LOGIN", "READ", "READ", "DOWNLOAD", "DOWNLOAD", "SEARCH", "EMAIL", "OPDS_ACCESS", "OPDS_ACCESS",
               "KOBO_SYNC", "API_CALL", "SHELF_ADD", "SHELF_REMOVE", "LOGOUT"]
ENDPOINTS = ["/opds/download/<book_id>/<book_format>/", "/opds/search/<query>", "/kobo/<auth_token>/v1/library/sync",
             "/api/books", "/opds/new"]


def _case(expr: str, values: list[str]) -> str:
    whens = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values))
    return f"(CASE {expr} {whens} END)"


def generate(path: str, rows: int, days: int = 365, users: int = 200, books: int = 20000, now: float | None = None,
             first_id: int = 1, unique_durations: bool = False) -> None:
    """Append ``rows`` events spread over ``days`` days ending at ``now`` (ids from ``first_id``).

    Users act in bursts (12 consecutive events from one user, as in a reading session); books follow a
    skewed popularity; every row carries CWA-style JSON ``extra_data``. API calls take 5-404 whole ms (as the
    shim stores them), or with ``unique_durations`` a duration in µs (as the shim stored it before 2026-12 and
    other writers may), which makes nearly every API row's ``extra_data`` a text of its own."""
    now = time.time() if now is None else now
    if first_id == 1 and os.path.exists(path):
        os.remove(path)
    engine = db.writer_engine(path)
    schema.create_all(engine)
    engine.dispose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    start = now - days * 86400
    step = days * 86400 / rows
    etype = _case(f"(x * 7919) % {len(EVENT_TYPES)}", EVENT_TYPES)
    endpoint = _case(f"(x * 31) % {len(ENDPOINTS)}", ENDPOINTS)
    fmt = _case("(x * 13) % 5", ["EPUB", "EPUB", "MOBI", "PDF", "AZW3"])
    source = _case("(x * 17) % 4", ["search", "series", "author", "direct"])
    device = _case("(x * 19) % 4", ["desktop", "mobile", "tablet", "ereader"])
    duration = "round(5 + ((x * 2654435761) % 400000) / 1000.0, 3)" if unique_durations else "5 + (x % 400)"
    conn.execute(f"""
        INSERT INTO cwa_user_activity (id, timestamp, user_id, user_name, event_type, item_id, item_title, extra_data)
        WITH RECURSIVE c(x) AS (SELECT {first_id} UNION ALL SELECT x + 1 FROM c WHERE x < {first_id + rows - 1}),
        e AS (SELECT x, {etype} AS et FROM c)
        SELECT x, datetime({start} + (x - {first_id}) * {step}, 'unixepoch'),
               1 + ((x / 12) * 2654435761) % {users}, 'user' || (1 + ((x / 12) * 2654435761) % {users}), et,
               CASE WHEN et IN ('READ', 'DOWNLOAD', 'EMAIL', 'SHELF_ADD', 'SHELF_REMOVE')
                    THEN 1 + abs((x * 40503) % {books}) * abs((x * 40503) % {books}) / {books} END,
               CASE WHEN et IN ('READ', 'DOWNLOAD', 'EMAIL', 'SHELF_ADD', 'SHELF_REMOVE') THEN 'Book title' END,
               CASE
                 WHEN et IN ('READ', 'DOWNLOAD', 'EMAIL')
                   THEN json_object('format', {fmt}, 'source', {source}, 'device_type', {device})
                 WHEN et = 'SEARCH' THEN json_object('query', 'term ' || (x % 500), 'device_type', {device})
                 WHEN et IN ('SHELF_ADD', 'SHELF_REMOVE') THEN json_object('shelf', 'Shelf ' || (x % 20))
                 WHEN et IN ('OPDS_ACCESS', 'KOBO_SYNC', 'API_CALL')
                   THEN json_object('endpoint', {endpoint}, 'method', 'GET', 'status', 200,
                                    'duration_ms', {duration}, 'device_type', 'ereader')
                 ELSE json_object('device_type', {device})
               END
        FROM e""")
    conn.commit()
    conn.close()
