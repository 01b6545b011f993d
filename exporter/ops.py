"""Retention and privacy on the activity store: ``prune`` old raw events, ``anonymize`` old user data.

Both work on SQLite and PostgreSQL through a writer engine, in small batches with one short transaction each,
so the app's shim keeps writing meanwhile (SQLite: a batch holds the write lock for milliseconds, well inside
the shim's busy timeout). Both print what they will change first and refuse without ``confirm=True``; both are
safe to interrupt (every finished batch is committed, the current one rolls back, a rerun continues).

Exposed counters stay monotonic: the exporter reads only rows above its cursor, so deleting or rewriting rows
it has already folded changes no counter. Rows are compared on the stored text timestamp (CWA's
``YYYY-MM-DD HH:MM:SS`` in UTC); rows with a NULL or unreadable timestamp are never touched.
"""

from __future__ import annotations

import json
import time
from datetime import date, datetime, timezone

from sqlalchemy import bindparam, text

from exporter.db import writer_engine

TABLE = "cwa_user_activity"
PRIVATE_KEYS = ("username_attempted", "ip")
DEFAULT_BATCH = 2000


def _cutoff_text(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def prune(config, older_than_seconds: float, confirm: bool, batch_size: int = DEFAULT_BATCH, out=print,
          now: float | None = None, pause: float = 0.0, engine=None) -> int:
    """Delete events older than ``older_than_seconds``; returns the number deleted (0 without ``confirm``).

    ``pause`` sleeps between batches to leave the database to the app on busy systems.
    """
    if older_than_seconds <= 0:
        raise ValueError("older_than must be positive")
    now = time.time() if now is None else now
    cutoff = _cutoff_text(datetime.fromtimestamp(now - older_than_seconds, timezone.utc))
    own = engine is None
    engine = engine or writer_engine(config.activity_db)
    try:
        with engine.connect() as conn:
            n, oldest, newest = conn.execute(
                text(f"SELECT COUNT(*), MIN(timestamp), MAX(timestamp) FROM {TABLE} WHERE timestamp < :c"),
                {"c": cutoff}).one()
            total = conn.execute(text(f"SELECT COUNT(*) FROM {TABLE}")).scalar()
        out(f"prune: {n} of {total} events are older than {cutoff} UTC"
            + (f" (from {oldest} to {newest})" if n else "") + f"; batches of {batch_size}.")
        if not n:
            return 0
        if not confirm:
            out("prune: nothing deleted; add --yes (confirm=True) to delete them.")
            return 0
        delete = text(f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} WHERE timestamp < :c "
                      f"ORDER BY id LIMIT :n)")
        deleted = 0
        last_report = time.monotonic()
        try:
            while True:
                with engine.begin() as conn:
                    count = conn.execute(delete, {"c": cutoff, "n": batch_size}).rowcount
                deleted += count
                if count < batch_size:
                    break
                if time.monotonic() - last_report > 5:
                    out(f"prune: {deleted} / {n} deleted")
                    last_report = time.monotonic()
                if pause:
                    time.sleep(pause)
        except KeyboardInterrupt:
            out(f"prune: interrupted after {deleted} deleted events (committed); run again to continue.")
            raise
        out(f"prune: deleted {deleted} events. On SQLite, 'VACUUM' returns the space to the file system.")
        return deleted
    finally:
        if own:
            engine.dispose()


def anonymized(user_id, user_name, extra_raw):
    """New (user_name, extra_data) for a row: ``User<id>`` (NULL without an id) and no private JSON keys.

    Legacy non-JSON ``extra_data`` (a plain format string) is left as it is.
    """
    name = f"User{user_id}" if user_id is not None else None
    extra = extra_raw
    if isinstance(extra_raw, str) and extra_raw.startswith("{"):
        try:
            value = json.loads(extra_raw)
        except ValueError:
            value = None
        if isinstance(value, dict) and any(k in value for k in PRIVATE_KEYS):
            for k in PRIVATE_KEYS:
                value.pop(k, None)
            extra = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return name, extra


def anonymize(config, before_date: date, confirm: bool, out=print, batch_size: int = DEFAULT_BATCH,
              engine=None) -> int:
    """Anonymise events before ``before_date`` (00:00 UTC); returns the number of rows changed."""
    cutoff = f"{before_date.isoformat()} 00:00:00"
    own = engine is None
    engine = engine or writer_engine(config.activity_db)
    private = " OR ".join(f"extra_data LIKE '%{k}%'" for k in PRIVATE_KEYS)
    try:
        with engine.connect() as conn:
            n, names, extras = conn.execute(text(
                f"SELECT COUNT(*), "
                f"SUM(CASE WHEN (user_id IS NULL AND user_name IS NOT NULL) OR (user_id IS NOT NULL AND "
                f"(user_name IS NULL OR user_name != 'User' || CAST(user_id AS TEXT))) THEN 1 ELSE 0 END), "
                f"SUM(CASE WHEN {private} THEN 1 ELSE 0 END) "
                f"FROM {TABLE} WHERE timestamp < :c"), {"c": cutoff}).one()
        out(f"anonymize: {n} events before {cutoff} UTC; {names or 0} user names become User<id> "
            f"(NULL without an id); up to {extras or 0} extra_data values lose {', '.join(PRIVATE_KEYS)}.")
        if not n or not confirm:
            if n:
                out("anonymize: nothing changed; add --yes (confirm=True) to apply.")
            return 0
        select = text(f"SELECT id, user_id, user_name, extra_data FROM {TABLE} WHERE timestamp < :c AND id > :last "
                      f"ORDER BY id LIMIT :n")
        update = text(f"UPDATE {TABLE} SET user_name = :name, extra_data = :extra WHERE id = :id").bindparams(
            bindparam("name"), bindparam("extra"), bindparam("id"))
        last, changed, seen = -1, 0, 0
        try:
            while True:
                with engine.begin() as conn:
                    rows = conn.execute(select, {"c": cutoff, "last": last, "n": batch_size}).fetchall()
                    if not rows:
                        break
                    params = []
                    for row_id, user_id, user_name, extra in rows:
                        name, new_extra = anonymized(user_id, user_name, extra)
                        if name != user_name or new_extra != extra:
                            params.append({"id": row_id, "name": name, "extra": new_extra})
                    if params:
                        conn.execute(update, params)
                last = rows[-1][0]
                changed += len(params)
                seen += len(rows)
        except KeyboardInterrupt:
            out(f"anonymize: interrupted after {changed} changed rows (committed); run again to continue.")
            raise
        out(f"anonymize: changed {changed} of {seen} events.")
        return changed
    finally:
        if own:
            engine.dispose()
