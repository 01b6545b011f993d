"""A generated ``cwa_user_activity`` database full of the edge cases real installs hold.

Rows are inserted directly (not through the shim) so that malformed data can be written on purpose:
legacy plain-string ``extra_data``, broken JSON, JSON scalars, NULLs, unparseable timestamps, ISO-8601 with
``T``/fractions/offsets, huge strings, odd unicode, unknown event types, anonymous events.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time


NOW = 1_790_000_000.0  # a fixed "now" (2026-09-21) so window boundaries are reproducible
USERS = [(1, "admin"), (2, "alice"), (3, "bob"), (4, "Zoë ☃"), (5, "eve"), (None, None), (7, None), (None, "ghost"),
         (9, 12345)]  # a user name stored as a number (SQLite keeps whatever type it is given)
TYPES = ["LOGIN", "LOGOUT", "LOGIN_FAILED", "DOWNLOAD", "READ", "SEARCH", "EMAIL", "OPDS_ACCESS", "KOBO_SYNC",
         "API_CALL", "SHELF_ADD", "SHELF_REMOVE", "CUSTOM_EVENT"]


def _extra(rng: random.Random, event_type: str):
    roll = rng.random()
    if roll < 0.04:
        return None
    if roll < 0.07:
        return rng.choice(["EPUB", "pdf", "mobi"])  # legacy plain string: the format
    if roll < 0.08:
        return '{"format": "EPUB", broken'
    if roll < 0.09:
        return rng.choice(['"EPUB"', "123", "[1, 2]", ""])
    data = {"device_type": rng.choice(["desktop", "mobile", "tablet", "ereader"])}
    if rng.random() < 0.1:
        del data["device_type"]
    if event_type in ("READ", "DOWNLOAD", "EMAIL"):
        if rng.random() < 0.9:
            data["format"] = rng.choice(["EPUB", "epub", "MOBI", "PDF", "AZW3", "KEPUB"])
        if rng.random() < 0.8:
            data["source"] = rng.choice(["search", "series", "author", "direct", "shelf"])
    elif event_type == "SEARCH":
        data["query"] = rng.choice(["dune", "tolkien", "ünïcödé ✓", "x" * 3000, "a\nb"])
    elif event_type in ("SHELF_ADD", "SHELF_REMOVE"):
        data["shelf"] = rng.choice(["To Read", "Favourites", "Kids"])
    elif event_type in ("OPDS_ACCESS", "KOBO_SYNC", "API_CALL"):
        data.update({"endpoint": rng.choice(["/opds/download/12/epub/", "/kobo/abc123def4567890abcd/v1/library/sync",
                                             "/api/books"]), "method": "GET", "status": rng.choice([200, 200, 404, 500])})
    return json.dumps(data)


def _timestamp(rng: random.Random, ts: float) -> str | None:
    roll = rng.random()
    if roll < 0.005:
        return None
    if roll < 0.01:
        return rng.choice(["not a date", "2026-13-45 99:99:99", ""])
    if roll < 0.05:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".250Z"
    if roll < 0.08:  # the same instant written with a +02:00 offset
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts + 7200)) + "+02:00"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def make_rows(n: int, seed: int = 1, now: float = NOW, span_days: int = 400) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    ts = now - span_days * 86400
    step = span_days * 86400 / n
    for _ in range(n):
        ts += rng.expovariate(1 / step)
        if ts > now:
            ts = now - rng.uniform(0, 3600)
        user_id, user_name = rng.choice(USERS)
        event_type = rng.choice(TYPES)
        if rng.random() < 0.005:
            event_type = rng.choice([None, "", " read "])
        item = rng.randint(1, 40) if event_type in ("READ", "DOWNLOAD", "EMAIL", "SHELF_ADD", "SHELF_REMOVE") else None
        title = None if item is None else rng.choice([f"Book {item}", f"Bøøk {item} — ✨", "T" * 5000, b"\xffblob"])
        rows.append({
            "timestamp": _timestamp(rng, ts), "user_id": user_id, "user_name": user_name, "event_type": event_type,
            "item_id": item, "item_title": title, "extra_data": _extra(rng, event_type or ""),
        })
        if event_type == "SEARCH" and rng.random() < 0.5:  # a search that leads to a read soon after
            rows.append({
                "timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(min(ts + rng.randint(0, 900), now))),
                "user_id": user_id, "user_name": user_name, "event_type": rng.choice(["READ", "DOWNLOAD"]),
                "item_id": rng.randint(1, 40), "item_title": "Found", "extra_data": json.dumps({"format": "EPUB"}),
            })
    return rows


# The table as Calibre-Web-Automated itself creates it (its scripts/cwa_schema.sql): event_type may be NULL
# there, and the timestamp column is DATETIME. The exporter must read such a database as it is.
CWA_ACTIVITY_DDL = """
CREATE TABLE IF NOT EXISTS cwa_user_activity (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER, user_name TEXT, event_type TEXT, item_id INTEGER,
    item_title TEXT, extra_data TEXT, timestamp DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX IF NOT EXISTS idx_activity_user ON cwa_user_activity(user_id);
CREATE INDEX IF NOT EXISTS idx_activity_event ON cwa_user_activity(event_type);
CREATE INDEX IF NOT EXISTS idx_activity_time ON cwa_user_activity(timestamp);
"""


def write_rows(path: str, rows: list[dict]) -> None:
    """Insert rows in one transaction into a CWA-made table."""
    conn = sqlite3.connect(path)
    conn.executescript(CWA_ACTIVITY_DDL)
    conn.executemany(
        "INSERT INTO cwa_user_activity (timestamp, user_id, user_name, event_type, item_id, item_title, extra_data)"
        " VALUES (:timestamp, :user_id, :user_name, :event_type, :item_id, :item_title, :extra_data)",
        rows,
    )
    conn.commit()
    conn.close()


def make_db(path: str, n: int = 5000, seed: int = 1, now: float = NOW) -> str:
    write_rows(path, make_rows(n, seed, now))
    return path


def valid_count(path: str, low: int = 0, high: int = 2**62) -> int:
    """Rows the exporter can use (readable timestamp and an event type), by SQLite's own reading."""
    conn = sqlite3.connect(path)
    n = conn.execute("SELECT count(*) FROM cwa_user_activity WHERE id BETWEEN ? AND ? AND julianday(timestamp)"
                     " IS NOT NULL AND trim(coalesce(event_type, '')) != ''", (low, high)).fetchone()[0]
    conn.close()
    return n
