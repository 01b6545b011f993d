"""``ActivityRecorder``: records activity events without ever slowing down or breaking the host app.

The caller's side (``log_activity``) does the least possible work: it stamps the time, reads the request's
User-Agent when needed and appends one tuple to a bounded in-memory queue. Everything that can be slow or can
fail (validation, JSON, device detection, the database) happens in a single writer thread that inserts in
batches, one transaction per batch. Every event ends up either in the database or in ``dropped[reason]``:

- ``queue_full``: the queue was at ``queue_size`` (the writer is behind or the database is stuck);
- ``invalid_event``: no usable ``event_type``;
- ``serialization_error``: ``extra_data`` cannot be stored as JSON (unserialisable values, NaN, odd keys);
- ``database_error``: a batch failed ``max_retries + 1`` times (locked, read-only, missing, corrupt), the
  exact number of events in it.

Drop counts are persisted into ``activity_shim_drops`` (``count = count + n``) in the same transaction as the
next successful batch, so the exporter can expose them. Over-long strings are truncated, not dropped (counted
in ``truncated``, which is not a drop).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from datetime import datetime, timezone

from sqlalchemy import text

from exporter import schema
from exporter.db import DEFAULT_BUSY_TIMEOUT_MS, sqlite_path, to_url, writer_engine
from exporter.shim.useragent import device_type as classify_device

log = logging.getLogger("exporter.shim")

DROP_REASONS = ("queue_full", "database_error", "serialization_error", "invalid_event")
MAX_TEXT = 1000  # the exporter truncates longer values (exporter.aggregate.events.MAX_TEXT)
MAX_EVENT_TYPE = 64
SQLITE_ROWS_PER_STATEMENT = 200  # 1,400 bound values, far below SQLite's limit
MAX_EXTRA_JSON = 60_000  # the exporter ignores extra_data beyond 64,000 characters
STANDARD_EXTRA_KEYS = ("format", "source", "query", "shelf", "device_type", "endpoint", "method", "status",
                       "duration_ms", "category", "action")

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode
_INSERT_COLUMNS = ("timestamp", "user_id", "user_name", "event_type", "item_id", "item_title", "extra_data")
_UPSERT_DROPS = text(
    "INSERT INTO activity_shim_drops (reason, count, updated_at) VALUES (:reason, :n, :now) "
    "ON CONFLICT (reason) DO UPDATE SET count = activity_shim_drops.count + excluded.count, "
    "updated_at = excluded.updated_at"
)


class _FlushMarker:
    """Put in the queue by ``flush``; the writer sets it once everything queued before it is settled."""

    __slots__ = ("done",)

    def __init__(self):
        self.done = threading.Event()


class _Stop:
    __slots__ = ()


def _to_int(value):
    if value is None or type(value) is int:
        return value
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


class ActivityRecorder:
    """Bounded queue + batch writer thread in front of the activity store (SQLite file or any SQLAlchemy URL).

    Options: ``queue_size`` (100,000), ``batch_size`` (2,000), ``flush_interval`` seconds (0.2),
    ``max_retries`` (3), ``retry_backoff`` seconds (0.1, doubled each retry), ``busy_timeout_ms`` (5,000),
    ``warn_interval`` seconds between two warnings of one kind (60), ``max_text`` (1,000),
    ``flush_at_exit`` (True), ``exit_timeout`` seconds (5). Flask options: see ``exporter.shim.flask_ext``.
    """

    def __init__(self, database_url: str | None = None, app=None, **options):
        self.database_url = to_url(database_url or os.environ.get("ACTIVITY_DB") or "activity.db")
        self.queue_size = int(options.pop("queue_size", 100_000))
        self.batch_size = max(1, int(options.pop("batch_size", 2000)))
        self.flush_interval = float(options.pop("flush_interval", 0.2))
        self.max_retries = max(0, int(options.pop("max_retries", 3)))
        self.retry_backoff = float(options.pop("retry_backoff", 0.1))
        self.busy_timeout_ms = int(options.pop("busy_timeout_ms", DEFAULT_BUSY_TIMEOUT_MS))
        self.warn_interval = float(options.pop("warn_interval", 60.0))
        self.max_text = int(options.pop("max_text", MAX_TEXT))
        self.exit_timeout = float(options.pop("exit_timeout", 5.0))
        flush_at_exit = bool(options.pop("flush_at_exit", True))
        self.flask_options = options  # the rest belongs to the Flask extension; it validates them
        self._sqlite_path = sqlite_path(self.database_url)
        self._closed = False
        self._init_process_state()
        self._engine = None
        self._ready = False
        self._start_writer()
        me = weakref.ref(self)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda: (r := me()) is not None and r._after_fork())
        if flush_at_exit:
            atexit.register(_close_at_exit, me)
        self.flask = None
        if app is not None:
            self.init_app(app)

    # ------------------------------------------------------------------ caller side

    def log_activity(self, user_id, user_name, event_type, item_id=None, item_title=None, extra_data=None, *,
                     timestamp=None, user_agent=None) -> None:
        """Enqueue one event; never raises, never blocks (a full queue counts a ``queue_full`` drop)."""
        try:
            if user_agent is None and _has_request_context():
                user_agent = _request.headers.get("User-Agent", "")
            if type(extra_data) is dict:
                extra_data = extra_data.copy()  # the caller may reuse or mutate its dict
            if len(self._queue) >= self.queue_size or self._closed:
                self._count_drop("queue_full", 1)
                return
            self._queue.append((timestamp if timestamp is not None else time.time(), user_id, user_name,
                                event_type, item_id, item_title, extra_data, user_agent))
            if len(self._queue) >= self.batch_size:
                self._wakeup.set()
        except Exception:  # pragma: no cover - defensive: the host app must never see our failures
            try:
                self._count_drop("invalid_event", 1)
            except Exception:
                pass

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written or dropped; False if ``timeout`` ran out first."""
        if self._closed or not self._thread.is_alive():
            return len(self._queue) == 0
        marker = _FlushMarker()
        self._queue.append(marker)
        self._wakeup.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush, stop the writer and release the database. Later ``log_activity`` calls count ``queue_full``."""
        if self._closed:
            return
        self.flush(timeout if timeout is not None else self.exit_timeout)
        self._closed = True
        self._queue.append(_Stop())
        self._wakeup.set()
        self._thread.join(timeout if timeout is not None else self.exit_timeout)
        if self._engine is not None:
            self._engine.dispose()

    @property
    def dropped(self) -> dict:
        """Events dropped in this process, by reason (a copy)."""
        with self._drop_lock:
            return dict(self._dropped)

    def stats(self) -> dict:
        """A snapshot of the recorder's health for status pages and tests."""
        with self._drop_lock:
            dropped = dict(self._dropped)
            unpersisted = dict(self._unpersisted)
        return {
            "database": _safe_url(self.database_url),
            "queued": sum(1 for item in list(self._queue) if type(item) is tuple),
            "queue_size": self.queue_size,
            "written": self._written,
            "batches": self._batches,
            "retries": self._retries,
            "dropped": dropped,
            "drops_not_yet_persisted": unpersisted,
            "truncated": self._truncated,
            "database_ok": self._db_ok,
            "last_error": self._last_error,
            "writer_alive": self._thread.is_alive(),
            "pid": self._pid,
        }

    def init_app(self, app, **options):
        """Install the Flask extension (request tracking, event rules, LOGIN signal) on ``app``."""
        from exporter.shim.flask_ext import FlaskActivity

        merged = dict(self.flask_options)
        merged.update(options)
        self.flask = FlaskActivity(self, app, **merged)
        return self.flask

    # ------------------------------------------------------------------ process state, fork

    def _init_process_state(self):
        self._pid = os.getpid()
        self._queue: deque = deque()
        self._wakeup = threading.Event()
        self._drop_lock = threading.Lock()
        self._dropped = {reason: 0 for reason in DROP_REASONS}
        self._unpersisted: dict[str, int] = {}
        self._last_warning: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._written = 0
        self._batches = 0
        self._retries = 0
        self._truncated = 0
        self._db_ok = None
        self._last_error = None
        self._file_id = None
        self._ts_cache = (None, None)
        self._last_idle_persist = 0.0

    def _start_writer(self):
        self._thread = threading.Thread(target=self._run, name="activity-shim-writer", daemon=True)
        self._thread.start()

    def _after_fork(self):
        """In a forked child (e.g. a Gunicorn worker): fresh queue, locks, connections and writer thread.

        Events queued in the parent stay the parent's (writing them here too would duplicate them), and the
        parent's drop counts are not the child's to persist.
        """
        self._init_process_state()
        if self._engine is not None:
            self._engine.dispose(close=False)  # never use or close the parent's sockets/files
            self._engine = None
        self._ready = False
        if not self._closed:
            self._start_writer()

    # ------------------------------------------------------------------ drops and warnings

    def _count_drop(self, reason: str, n: int, detail: str = "") -> None:
        if n <= 0:
            return
        with self._drop_lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + n
            self._unpersisted[reason] = self._unpersisted.get(reason, 0) + n
        self._warn(reason, f"activity shim dropped {n} event(s): {reason}{': ' + detail if detail else ''}", n)

    def _warn(self, kind: str, message: str, n: int = 1) -> None:
        """At most one warning per kind per ``warn_interval``; the ones held back are counted in the next."""
        now = time.monotonic()
        with self._drop_lock:
            last = self._last_warning.get(kind)
            if last is not None and now - last < self.warn_interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + n
                return
            self._last_warning[kind] = now
            held = self._suppressed.pop(kind, 0)
        try:
            log.warning("%s%s", message, f" (+{held} more since the last warning)" if held else "")
        except Exception:  # pragma: no cover
            pass

    # ------------------------------------------------------------------ writer thread

    def _run(self):
        queue = self._queue
        while True:
            if not queue:
                if self._unpersisted and time.monotonic() - self._last_idle_persist >= 1.0:
                    self._last_idle_persist = time.monotonic()
                    self._write_batch([], retries=False)  # persist drops even when no event arrives
                self._wakeup.wait(self.flush_interval)
                self._wakeup.clear()
                if not queue:
                    continue
            batch = []
            markers = []
            stop = False
            popleft = queue.popleft
            try:
                while len(batch) < self.batch_size:
                    item = popleft()
                    if type(item) is tuple:
                        batch.append(item)
                    elif type(item) is _FlushMarker:
                        markers.append(item)
                        break
                    else:
                        stop = True
                        break
            except IndexError:
                pass
            try:
                if batch or (markers and self._unpersisted):
                    rows = self._prepare(batch)
                    if rows or self._unpersisted:
                        self._write_batch(rows)
            except Exception as exc:  # pragma: no cover - a bug here must not kill the writer
                self._count_drop("database_error", len(batch), repr(exc))
            for marker in markers:
                marker.done.set()
            if stop:
                return

    def _format_ts(self, value) -> str:
        if type(value) is float or type(value) is int:
            second = int(value)
        elif isinstance(value, datetime):
            if value.tzinfo is not None:
                value = value.astimezone(timezone.utc)
            return value.strftime(schema.TIMESTAMP_FORMAT)
        else:
            second = int(float(value))
        cached_second, cached_text = self._ts_cache
        if cached_second == second:
            return cached_text
        formatted = time.strftime(schema.TIMESTAMP_FORMAT, time.gmtime(second))
        self._ts_cache = (second, formatted)
        return formatted

    def _text(self, value, limit=None):
        if value is None:
            return None
        if type(value) is not str:
            value = str(value)
        limit = limit or self.max_text
        if len(value) > limit:
            self._truncated += 1
            return value[:limit]
        return value

    def _extra_json(self, extra, user_agent):
        """``extra_data`` as compact JSON text (with ``device_type``), or a legacy string kept as it is."""
        if extra is None:
            extra = {}
        elif type(extra) is str:
            stripped = extra.strip()
            if not stripped.startswith("{"):
                return self._text(extra)  # CWA legacy: a plain string (the format) stays a plain string
            extra = json.loads(stripped)  # ValueError -> serialization_error
            if type(extra) is not dict:
                raise ValueError("extra_data JSON is not an object")
        elif type(extra) is not dict:
            if not isinstance(extra, dict):
                raise TypeError(f"extra_data must be a dict or JSON text, not {type(extra).__name__}")
            extra = dict(extra)
        if "device_type" not in extra:
            extra["device_type"] = classify_device(user_agent)
        max_text = self.max_text
        for key, value in extra.items():
            if type(value) is str and len(value) > max_text:
                extra[key] = value[:max_text]
                self._truncated += 1
        out = _encode(extra)
        if len(out) > MAX_EXTRA_JSON:
            self._truncated += 1
            out = _encode({k: extra[k] for k in STANDARD_EXTRA_KEYS if k in extra})
            if len(out) > MAX_EXTRA_JSON:
                raise ValueError("extra_data too large")
        return out

    def _prepare(self, batch) -> list:
        """Validated rows for the INSERT; invalid or unserialisable events are counted and left out."""
        rows = []
        invalid = unserialisable = 0
        detail = ""
        max_text = self.max_text
        for ts, user_id, user_name, event_type, item_id, item_title, extra, user_agent in batch:
            if type(event_type) is not str:
                if event_type is None or not isinstance(event_type, str):
                    invalid += 1
                    continue
            event_type = event_type.strip().upper()
            if not event_type:
                invalid += 1
                continue
            if len(event_type) > MAX_EVENT_TYPE:
                event_type = event_type[:MAX_EVENT_TYPE]
                self._truncated += 1
            try:
                stamp = self._format_ts(ts)
            except (TypeError, ValueError, OverflowError, OSError):
                invalid += 1
                continue
            try:
                extra_json = self._extra_json(extra, user_agent)
            except (TypeError, ValueError, RecursionError) as exc:
                unserialisable += 1
                detail = f"{type(exc).__name__}: {exc}"[:200]
                continue
            if user_name is not None and (type(user_name) is not str or len(user_name) > max_text):
                user_name = self._text(user_name)
            if item_title is not None and (type(item_title) is not str or len(item_title) > max_text):
                item_title = self._text(item_title)
            rows.append((stamp, user_id if type(user_id) is int else _to_int(user_id), user_name, event_type,
                         item_id if type(item_id) is int else _to_int(item_id), item_title, extra_json))
        if invalid:
            self._count_drop("invalid_event", invalid, "no usable event_type or timestamp")
        if unserialisable:
            self._count_drop("serialization_error", unserialisable, detail)
        return rows

    # ------------------------------------------------------------------ database

    def _connect(self):
        """The engine, (re)created when missing or when the SQLite file was deleted or replaced."""
        path = self._sqlite_path
        if path is not None and self._engine is not None and self._file_id is not None:
            try:
                st = os.stat(path)
                current = (st.st_dev, st.st_ino)
            except OSError:
                current = None
            if current != self._file_id:
                self._warn("database_replaced", f"activity database {path} was deleted or replaced; reopening")
                self._reset_engine()
        if self._engine is None:
            self._engine = writer_engine(self.database_url, busy_timeout_ms=self.busy_timeout_ms)
            self._ready = False
        if not self._ready:
            schema.create_all(self._engine)
            self._ready = True
            if path is not None:
                st = os.stat(path)
                self._file_id = (st.st_dev, st.st_ino)
        return self._engine

    def _reset_engine(self):
        engine, self._engine, self._ready, self._file_id = self._engine, None, False, None
        if engine is not None:
            try:
                engine.dispose()
            except Exception:
                pass

    def _insert(self, conn, engine, rows: list) -> None:
        """SQLite: multi-row ``INSERT ... VALUES (...), (...)`` in chunks (about twice as fast as executemany);
        other databases: the driver's executemany (psycopg pipelines it)."""
        cols = ", ".join(_INSERT_COLUMNS)
        if engine.dialect.name == "sqlite":
            one = "(" + ", ".join(["?"] * len(_INSERT_COLUMNS)) + ")"
            for start in range(0, len(rows), SQLITE_ROWS_PER_STATEMENT):
                chunk = rows[start:start + SQLITE_ROWS_PER_STATEMENT]
                sql = f"INSERT INTO cwa_user_activity ({cols}) VALUES " + ", ".join([one] * len(chunk))
                conn.exec_driver_sql(sql, tuple([value for row in chunk for value in row]))
            return
        style = engine.dialect.paramstyle
        mark = "?" if style == "qmark" else "%s"
        values = ", ".join([mark] * len(_INSERT_COLUMNS))
        conn.exec_driver_sql(f"INSERT INTO cwa_user_activity ({cols}) VALUES ({values})", rows)

    def _write_batch(self, rows: list, retries: bool = True) -> bool:
        """One transaction: the rows plus any pending drop counts. Retried with backoff, then dropped."""
        attempts = self.max_retries + 1 if retries else 1
        delay = self.retry_backoff
        for attempt in range(attempts):
            with self._drop_lock:
                drops = dict(self._unpersisted)
            try:
                engine = self._connect()
                with engine.begin() as conn:
                    if rows:
                        self._insert(conn, engine, rows)
                    if drops:
                        now = time.strftime(schema.TIMESTAMP_FORMAT, time.gmtime())
                        conn.execute(_UPSERT_DROPS, [{"reason": r, "n": n, "now": now} for r, n in drops.items()])
                if self._file_id is not None and not self._same_file():
                    # Deleted while we wrote: the rows may have gone into the unlinked file. Write them again
                    # into the new one (the old file is gone, so this cannot duplicate anything visible).
                    raise OSError("activity database was deleted during the write")
            except Exception as exc:
                self._db_ok = False
                self._last_error = f"{type(exc).__name__}: {exc}"[:500]
                self._reset_engine()
                if attempt + 1 < attempts:
                    self._retries += 1
                    time.sleep(delay)
                    delay *= 2
                    continue
                self._count_drop("database_error", len(rows), self._last_error)
                return False
            with self._drop_lock:
                for reason, n in drops.items():
                    left = self._unpersisted.get(reason, 0) - n
                    if left > 0:
                        self._unpersisted[reason] = left
                    else:
                        self._unpersisted.pop(reason, None)
            if self._db_ok is False:
                log.warning("activity database writable again; logging resumed")
            self._db_ok = True
            self._written += len(rows)
            self._batches += 1
            return True
        return False  # pragma: no cover

    def _same_file(self) -> bool:
        try:
            st = os.stat(self._sqlite_path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._file_id


def _close_at_exit(ref):
    recorder = ref()
    if recorder is not None and recorder._pid == os.getpid():
        try:
            recorder.close(recorder.exit_timeout)
        except Exception:  # pragma: no cover
            pass


def _safe_url(url: str) -> str:
    """The URL without its password, for status output."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # pragma: no cover
        return "?"


try:
    from flask import has_request_context as _has_request_context
    from flask import request as _request
except ImportError:  # pragma: no cover - Flask is a dependency, but the recorder works without it
    def _has_request_context():
        return False

    _request = None
