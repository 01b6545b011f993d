"""CWA's own history tables (``cwa_import``, ``cwa_conversions``, ``cwa_enforcement``, ``epub_fixes``) as counters.

Read incrementally: per table, only rows with ``id > cursor``, in chunks of ``config.chunk_size``, through the
read-only engine of the activity store. The counts live in this object (and its checkpoint), never in a
``COUNT(*)``, so a counter does not go down when CWA or ``prune`` deletes rows. If a table's ``MAX(id)`` falls
below the cursor (the table was emptied or the database replaced), the cursor moves down to it, so later rows
are counted and no earlier row is counted twice. Each table has an ``IdCursor`` (the same as the activity
table's): on PostgreSQL, where a lower id can commit after a higher one, a missing id is waited for, so no
row is missed or counted twice.

Old CWA databases lack tables or columns (``end_format``, our ``source``/``method``): a missing table reads as
empty, a missing column as NULL. CWA writes these timestamps with ``datetime.now()``, i.e. in the local time of
the CWA host: they are read in ``config.history_timezone`` (``local`` = this machine's zone). A row whose
timestamp cannot be read is still counted (it happened) and noted as ``malformed{reason="bad_timestamp"}``.

Labels and their bounds:
- ``format`` (imports, from the file name's extension; CWA's ingest records the name without one, so
  ``unknown`` is common) and ``from_format``/``to_format``: an allow-list of e-book/audio formats
  (``KNOWN_FORMATS``), anything else ``other``, empty ``unknown``.
- ``source``/``method``: our optional ``cwa_import`` columns; NULL -> ``unknown`` / ``ingest`` (CWA's rows
  come from its ingest processor); capped at ``config.label_cap`` distinct values, then ``other``.
- ``trigger`` (enforcements): CWA's ``trigger_type`` (``auto -log``, ``auto -log (failed)``, ``manual -dir``,
  ``manual -all``), capped at ``config.label_cap``. For ``epub_fixes``: ``manual`` or ``auto``.
- top enforced books: ``config.top_enforced_books`` entries, ranked by exact counts over every row ever read.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime
from zoneinfo import ZoneInfo

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import inspect, text

from .cursor import IdCursor, grace_for
from .labels import OTHER, LabelCap, clean

KNOWN_FORMATS = frozenset(
    "EPUB KEPUB MOBI AZW AZW3 AZW4 KFX PDF TXT TXTZ RTF DOC DOCX ODT FB2 FBZ LIT LRF PDB PML RB SNB TCR PRC "
    "CHM DJVU DJV HTML HTM HTMLZ XHTML MD MARKDOWN CBZ CBR CB7 CBC ZIP RAR 7Z M4B M4A MP3 AAC OGG OPUS FLAC "
    "WAV WMA".split()
)
TABLES = {
    "cwa_import": ("id", "timestamp", "filename", "source", "method"),
    "cwa_conversions": ("id", "timestamp", "original_format", "end_format"),
    "cwa_enforcement": ("id", "timestamp", "book_id", "book_title", "trigger_type"),
    "epub_fixes": ("id", "timestamp", "manually_triggered", "num_of_fixes_applied"),
}
_TRUE = {"1", "true", "yes", "on", "manual"}


def format_label(value) -> str:
    """A bounded format label: allow-listed formats upper-cased, anything else ``other``, empty ``unknown``."""
    fmt = str(value or "").strip().lstrip(".").upper()
    if not fmt:
        return "unknown"
    return fmt if fmt in KNOWN_FORMATS else OTHER


def extension_format(filename) -> str:
    """The format of a file name by its extension (``unknown`` without a recognised one)."""
    ext = os.path.splitext(str(filename or ""))[1]
    label = format_label(ext)
    return "unknown" if label == OTHER else label


class LocalTime:
    """Naive local timestamps in a configured zone -> epoch seconds (``local`` = the machine's zone)."""

    def __init__(self, zone_name: str):
        self.zone = None if zone_name == "local" else ZoneInfo(zone_name)
        self._hours: dict[str, float | None] = {}  # 'YYYY-MM-DD HH' -> epoch of that local hour

    def __call__(self, value) -> float | None:
        if isinstance(value, str) and len(value) == 19 and value[13] == ":" and value[16] == ":":
            # CWA's own format: convert once per local hour, then add minutes and seconds. Only hours
            # with one offset throughout are cached; an hour holding a transition takes the exact path.
            hour = value[:13]
            base = self._hours.get(hour, False)
            if base is False:
                start, end = self._convert(hour + ":00:00"), self._convert(hour + ":59:59")
                base = start if start is not None and end == start + 3599 else None
                if len(self._hours) > 100_000:
                    self._hours.clear()
                self._hours[hour] = base
            mm, ss = value[14:16], value[17:19]
            if base is not None and mm.isdigit() and ss.isdigit() and int(mm) <= 59 and int(ss) <= 59:
                return base + int(mm) * 60 + int(ss)
        return self._convert(value)

    def _convert(self, value) -> float | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            dt = value
        else:
            try:
                dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
            except ValueError:
                return None
        if dt.tzinfo is None:
            if self.zone is None:
                return dt.timestamp()  # naive datetime: Python reads it in the machine's local zone
            dt = dt.replace(tzinfo=self.zone)
        return dt.timestamp()


class HistorySource:
    """Source (see ``exporter.aggregate``) of the import / conversion / enforcement / EPUB-fix counters."""

    name = "history"
    database = "activity"

    def __init__(self, config, health, engine):
        self.config = config
        self.health = health
        self.engine = engine
        self.chunk_size = config.chunk_size
        self.local_time = LocalTime(config.history_timezone)
        self.cursors: dict[str, IdCursor] = {t: IdCursor(grace_for(engine)) for t in TABLES}
        self.imports: Counter = Counter()  # (source, method, format)
        self.conversions: Counter = Counter()  # (from, to)
        self.enforcements: Counter = Counter()  # trigger
        self.epub_fixes: Counter = Counter()  # manual|auto
        self.epub_fixes_applied: Counter = Counter()  # manual|auto -> fixes
        self.enforced_books: dict[int, list] = {}  # book_id -> [count, last_ts or None, title]
        self.last_timestamp: dict[str, float] = {}  # table -> newest row time seen
        self.source_cap = LabelCap(config.label_cap)
        self.method_cap = LabelCap(config.label_cap)
        self.trigger_cap = LabelCap(config.label_cap)

    # --- reading ----------------------------------------------------------------------------------------

    def _columns(self, conn) -> dict[str, set]:
        inspector = inspect(conn)
        names = set(inspector.get_table_names())
        return {t: {c["name"] for c in inspector.get_columns(t)} for t in TABLES if t in names}

    def refresh(self, now: float) -> int:
        """Fold every new history row into the counters; returns how many rows were read."""
        total = 0
        with self.engine.connect() as conn:
            present = self._columns(conn)
            for table, wanted in TABLES.items():
                columns = present.get(table, set())
                if "id" not in columns:
                    continue  # table (or its key) missing in this CWA version: nothing to read
                select = ", ".join(f'"{c}"' if c in columns else "NULL" for c in wanted)
                top = conn.execute(text(f'SELECT MAX("id") FROM "{table}"')).scalar()
                cursor = self.cursors[table]
                if (top or 0) < cursor.safe:
                    cursor.reset(top or 0)  # table emptied or replaced: follow it down, count nothing twice
                fold = getattr(self, "_fold_" + table)
                after = cursor.safe
                while True:
                    rows = conn.execute(
                        text(f'SELECT {select} FROM "{table}" WHERE "id" > :cursor ORDER BY "id" LIMIT :n'),
                        {"cursor": after, "n": self.chunk_size},
                    ).fetchall()
                    if not rows:
                        break
                    fetched, after = len(rows), rows[-1][0]
                    if cursor.seen:  # ids above a gap were folded already
                        rows = [row for row in rows if cursor.is_new(row[0])]
                    cursor.mark_many([row[0] for row in rows])
                    for row in rows:
                        ts = self.local_time(row[1])
                        if ts is None:
                            self.health.malformed(table, "bad_timestamp")
                        elif ts > self.last_timestamp.get(table, float("-inf")):
                            self.last_timestamp[table] = ts
                        fold(row, ts)
                    self.health.ingested(table, len(rows))
                    total += len(rows)
                    if fetched < self.chunk_size:
                        break
                cursor.settle(now)
            conn.rollback()
        return total

    def _fold_cwa_import(self, row, ts):
        _, _, filename, source, method = row
        source = self.source_cap(clean(source, 60) or "unknown")
        method = self.method_cap(clean(method, 60) or "ingest")
        self.imports[(source, method, extension_format(filename))] += 1

    def _fold_cwa_conversions(self, row, ts):
        _, _, original, end = row
        self.conversions[(format_label(original), format_label(end))] += 1

    def _fold_cwa_enforcement(self, row, ts):
        _, _, book_id, title, trigger = row
        self.enforcements[self.trigger_cap(clean(trigger, 60) or "unknown")] += 1
        try:
            book_id = int(book_id)
        except (TypeError, ValueError):
            self.health.malformed("cwa_enforcement", "bad_book_id")
            return
        entry = self.enforced_books.get(book_id)
        if entry is None:
            entry = self.enforced_books[book_id] = [0, None, ""]
        entry[0] += 1
        if ts is not None and (entry[1] is None or ts >= entry[1]):
            entry[1] = ts
        if title:
            entry[2] = clean(title)  # the newest title seen for the book

    def _fold_epub_fixes(self, row, ts):
        _, _, manual, fixes = row
        trigger = "manual" if str(manual).strip().lower() in _TRUE else "auto"
        self.epub_fixes[trigger] += 1
        try:
            self.epub_fixes_applied[trigger] += max(0, int(str(fixes).strip()))
        except (TypeError, ValueError):
            pass

    # --- output -----------------------------------------------------------------------------------------

    def top_enforced(self) -> list[tuple[int, int, float | None, str]]:
        """(book_id, count, last_ts, title) of the most enforced books: count desc, then most recent, then id."""
        ranked = sorted(self.enforced_books.items(), key=lambda kv: (-kv[1][0], -(kv[1][1] or 0), kv[0]))
        return [(b, e[0], e[1], e[2]) for b, e in ranked[: self.config.top_enforced_books]]

    def families(self, now: float) -> list:
        imports = CounterMetricFamily("activity_imports_total", "Books imported by CWA (cwa_import rows).",
                                      labels=["source", "method", "format"])
        for key, n in sorted(self.imports.items()):
            imports.add_metric(list(key), n)
        conversions = CounterMetricFamily("activity_conversions_total", "Format conversions (cwa_conversions rows).",
                                          labels=["from_format", "to_format"])
        for key, n in sorted(self.conversions.items()):
            conversions.add_metric(list(key), n)
        enforcements = CounterMetricFamily("activity_enforcements_total",
                                           "Metadata enforcement operations (cwa_enforcement rows).", labels=["trigger"])
        for key, n in sorted(self.enforcements.items()):
            enforcements.add_metric([key], n)
        fixes = CounterMetricFamily("activity_epub_fixes_total", "EPUB fixer runs (epub_fixes rows).",
                                    labels=["trigger"])
        applied = CounterMetricFamily("activity_epub_fixes_applied_total",
                                      "Individual fixes applied by the EPUB fixer.", labels=["trigger"])
        for key in sorted(self.epub_fixes):
            fixes.add_metric([key], self.epub_fixes[key])
            applied.add_metric([key], self.epub_fixes_applied[key])
        top = GaugeMetricFamily("activity_top_enforced_books", "Enforcement operations of the most enforced books.",
                                labels=["book_id", "title"])
        last = GaugeMetricFamily("activity_top_enforced_book_last_timestamp_seconds",
                                 "When a top enforced book was last enforced.", labels=["book_id", "title"])
        for book_id, count, ts, title in self.top_enforced():
            top.add_metric([str(book_id), title], count)
            if ts is not None:
                last.add_metric([str(book_id), title], ts)
        newest = GaugeMetricFamily("activity_history_last_timestamp_seconds",
                                   "Time of the newest row read from a CWA history table.", labels=["table"])
        for table in sorted(self.last_timestamp):
            newest.add_metric([table], self.last_timestamp[table])
        return [imports, conversions, enforcements, fixes, applied, top, last, newest]

    # --- checkpoint -------------------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "cursors": {t: c.state() for t, c in self.cursors.items()},
            "imports": [[*k, n] for k, n in self.imports.items()],
            "conversions": [[*k, n] for k, n in self.conversions.items()],
            "enforcements": dict(self.enforcements),
            "epub_fixes": dict(self.epub_fixes),
            "epub_fixes_applied": dict(self.epub_fixes_applied),
            "enforced_books": [[b, *e] for b, e in self.enforced_books.items()],
            "last_timestamp": dict(self.last_timestamp),
            "caps": {"source": self.source_cap.state(), "method": self.method_cap.state(),
                     "trigger": self.trigger_cap.state()},
        }

    def load_state(self, state: dict) -> None:
        for table, saved in state.get("cursors", {}).items():
            if table in self.cursors:
                self.cursors[table].load_state(saved)
        self.imports = Counter({(s, m, f): n for s, m, f, n in state.get("imports", [])})
        self.conversions = Counter({(a, b): n for a, b, n in state.get("conversions", [])})
        self.enforcements = Counter(state.get("enforcements", {}))
        self.epub_fixes = Counter(state.get("epub_fixes", {}))
        self.epub_fixes_applied = Counter(state.get("epub_fixes_applied", {}))
        self.enforced_books = {int(b): [n, ts, title] for b, n, ts, title in state.get("enforced_books", [])}
        self.last_timestamp = dict(state.get("last_timestamp", {}))
        caps = state.get("caps", {})
        self.source_cap = LabelCap(self.config.label_cap, caps.get("source", ()))
        self.method_cap = LabelCap(self.config.label_cap, caps.get("method", ()))
        self.trigger_cap = LabelCap(self.config.label_cap, caps.get("trigger", ()))
