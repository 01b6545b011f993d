"""Calibre library state (``metadata.db``) as ``calibre_*`` gauges, for the Library Statistics tab.

The database is Calibre's own: it is opened read-only (``file:...?mode=ro``) and only base tables are queried,
because Calibre's views call SQL functions (``title_sort``, ``books_list_filter`` ...) that exist only inside
Calibre. A refresh re-reads the library only when it changed: the file signature (inode, size, mtime of
``metadata.db`` and its ``-wal``) and ``PRAGMA data_version`` on a kept connection are compared with the last
read, so an idle library costs two ``stat`` calls and one pragma per refresh.

Label bounds (library metadata is edited by people and imported from files, so it is not trusted):
- ``series``: the ``series_cap`` (default ``SERIES_CAP`` = 500) series with most books, ties by name; the
  books of all other series are summed into ``series="other"`` in ``calibre_series_books`` (no max index).
- ``format``: the ``config.label_cap`` formats with most books; the rest summed into ``format="other"``.
- ``year``: publication years from 1000 to this year + ``MAX_FUTURE_YEARS``; Calibre's "undefined" date
  (``0101-01-01``, possibly shifted by a time zone into year 100) and absurd years are left out.
- ``stars``: ``rating / 2`` for ratings 1..10 (``"0.5"`` .. ``"5"``); 0, NULL or out-of-range is unrated.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import defaultdict
from datetime import datetime, timezone
from urllib.parse import quote

from prometheus_client.core import GaugeMetricFamily

from .labels import OTHER, clean

SERIES_CAP = 500
MIN_YEAR = 1000
MAX_FUTURE_YEARS = 10


def open_readonly(path: str, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection that can never create, lock for writing or change the library file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Calibre library database not found: {path}")
    uri = "file:" + quote(os.path.abspath(path)) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    return conn


def _stat(path: str):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def file_signature(path: str) -> tuple:
    """What changes whenever Calibre writes: the database file and its WAL (if the library uses WAL)."""
    return (_stat(path), _stat(path + "-wal"))


def parse_calibre_time(value) -> float | None:
    """Epoch seconds from Calibre's ``TIMESTAMP`` text (``2024-05-01 10:00:00.123+00:00``); None if unreadable."""
    if value is None:
        return None
    text = str(value).strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def stars_label(rating: int) -> str:
    """Calibre's 0..10 rating as a star label: 7 -> ``"3.5"``, 10 -> ``"5"``."""
    return f"{rating / 2:g}"


def book_added_timestamps(path: str) -> list[float]:
    """``books.timestamp`` (date added) of every book as epoch seconds, sorted: library growth for backfill."""
    conn = open_readonly(path)
    try:
        out = [t for (v,) in conn.execute("SELECT timestamp FROM books") if (t := parse_calibre_time(v)) is not None]
    finally:
        conn.close()
    out.sort()
    return out


def _top(counts: dict, cap: int) -> tuple[list, int]:
    """The ``cap`` largest entries (count desc, then key) and the summed count of the rest."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ordered[:cap], sum(n for _, n in ordered[cap:])


class LibrarySource:
    """Source (see ``exporter.aggregate``) of the ``calibre_*`` gauges; re-reads only a changed library."""

    name = "library"
    database = "calibre"

    def __init__(self, config, health, series_cap: int = SERIES_CAP, path: str | None = None):
        self.config = config
        self.health = health
        self.path = path or config.calibre_library
        if self.path and os.path.isdir(self.path):
            self.path = os.path.join(self.path, "metadata.db")
        self.series_cap = series_cap
        self.format_cap = config.label_cap
        self._conn: sqlite3.Connection | None = None
        self._signature = None
        self._data_version = None
        self._families: list = []
        self.reads = 0  # how many times the library was actually read (for tests and debugging)
        self.last_read_seconds = 0.0

    # --- change detection -------------------------------------------------------------------------------

    def _connection(self, signature) -> sqlite3.Connection:
        inode = signature[0][0] if signature[0] else None
        if self._conn is not None and (self._signature is None or self._signature[0] is None
                                       or self._signature[0][0] != inode):
            self.close()  # the file was replaced (restore, copy): the old connection sees the old inode
        if self._conn is None:
            self._conn = open_readonly(self.path)
            self._data_version = None
        return self._conn

    def changed(self) -> bool:
        """True when the library may differ from the last read (always True before the first read)."""
        if not self._families or self._conn is None:
            return True
        if file_signature(self.path) != self._signature:
            return True
        return self._conn.execute("PRAGMA data_version").fetchone()[0] != self._data_version

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- source contract --------------------------------------------------------------------------------

    def refresh(self, now: float) -> bool:
        """Re-read the library if it changed; returns whether it did. Raises when the file cannot be read."""
        if not self.path:
            return False
        if not self.changed():
            return False
        signature = file_signature(self.path)
        if signature[0] is None:
            self.close()
            raise FileNotFoundError(f"Calibre library database not found: {self.path}")
        conn = self._connection(signature)
        started = time.perf_counter()
        try:
            data_version = conn.execute("PRAGMA data_version").fetchone()[0]
            conn.execute("BEGIN")  # one consistent snapshot for every query below
            try:
                families = self._read(conn, now)
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            self.close()
            raise
        self._families = families
        self._signature = signature
        self._data_version = data_version
        self.reads += 1
        self.last_read_seconds = time.perf_counter() - started
        return True

    def families(self, now: float) -> list:
        return list(self._families)

    def state(self) -> dict:
        return {}  # library state is re-read from metadata.db; nothing to checkpoint

    def load_state(self, state: dict) -> None:
        pass

    # --- the queries (base tables only) ---------------------------------------------------------------

    def _read(self, conn: sqlite3.Connection, now: float) -> list:
        books = conn.execute("SELECT COUNT(*) FROM books").fetchone()[0]
        out = [GaugeMetricFamily("calibre_books", "Books in the Calibre library.", value=books)]
        out += self._formats(conn)
        out += self._series(conn)
        out.append(self._pubyears(conn, now))
        out += self._ratings(conn, books)
        for metric, table, column, what in (
            ("calibre_authors", "books_authors_link", "author", "Authors"),
            ("calibre_tags", "books_tags_link", "tag", "Tags"),
            ("calibre_languages", "books_languages_link", "lang_code", "Languages"),
        ):
            n = conn.execute(
                f"SELECT COUNT(DISTINCT {column}) FROM {table} WHERE book IN (SELECT id FROM books)"
            ).fetchone()[0]
            out.append(GaugeMetricFamily(metric, f"{what} with at least one book in the library.", value=n))
        return out

    def _formats(self, conn) -> list:
        books: dict = defaultdict(int)
        size: dict = defaultdict(int)
        for fmt, n, total in conn.execute(
            "SELECT UPPER(format), COUNT(DISTINCT book), COALESCE(SUM(uncompressed_size), 0) FROM data "
            "WHERE book IN (SELECT id FROM books) GROUP BY UPPER(format)"
        ):
            label = clean(fmt, 20) or "unknown"
            books[label] += n
            size[label] += total
        top, _ = _top(books, self.format_cap)
        kept = {k for k, _ in top}
        fb = GaugeMetricFamily("calibre_format_books", "Books having a file in this format.", labels=["format"])
        fs = GaugeMetricFamily("calibre_format_size_bytes", "Total uncompressed size of the files in this format.",
                               labels=["format"])
        rest_books = rest_size = 0
        for label in sorted(books):
            if label in kept:
                fb.add_metric([label], books[label])
                fs.add_metric([label], size[label])
            else:
                rest_books += books[label]
                rest_size += size[label]
        if len(kept) < len(books):
            fb.add_metric([OTHER], rest_books)
            fs.add_metric([OTHER], rest_size)
        return [fb, fs]

    def _series(self, conn) -> list:
        counts: dict = defaultdict(int)
        max_index: dict = {}
        for name, n, top_index in conn.execute(
            "SELECT s.name, COUNT(b.id), MAX(b.series_index) FROM books_series_link l "
            "JOIN series s ON s.id = l.series JOIN books b ON b.id = l.book GROUP BY s.id"
        ):
            label = clean(name) or "unknown"
            counts[label] += n
            if top_index is not None:
                max_index[label] = max(max_index.get(label, top_index), top_index)
        top, rest = _top(counts, self.series_cap)
        sb = GaugeMetricFamily("calibre_series_books", "Books owned in the series (top series by book count).",
                               labels=["series"])
        sm = GaugeMetricFamily("calibre_series_max_index", "Highest series index owned in the series.",
                               labels=["series"])
        for label, n in top:
            sb.add_metric([label], n)
            if label in max_index:
                sm.add_metric([label], float(max_index[label]))
        if len(counts) > len(top):
            sb.add_metric([OTHER], rest)
        total = GaugeMetricFamily("calibre_series", "Series with at least one book in the library.",
                                  value=len(counts))
        return [sb, sm, total]

    def _pubyears(self, conn, now: float):
        last_year = datetime.fromtimestamp(now, timezone.utc).year + MAX_FUTURE_YEARS
        fam = GaugeMetricFamily("calibre_books_by_pubyear", "Books by publication year (undefined dates excluded).",
                                labels=["year"])
        for year, n in conn.execute(
            "SELECT CAST(SUBSTR(pubdate, 1, 4) AS INTEGER) AS y, COUNT(*) FROM books "
            "WHERE pubdate IS NOT NULL AND SUBSTR(pubdate, 5, 1) = '-' GROUP BY y"
        ):
            if year is not None and MIN_YEAR <= year <= last_year:
                fam.add_metric([str(year)], n)
        return fam

    def _ratings(self, conn, books: int) -> list:
        by_rating: dict = defaultdict(int)
        for rating, n in conn.execute(
            "SELECT r, COUNT(*) FROM (SELECT l.book, MAX(r.rating) AS r FROM books_ratings_link l "
            "JOIN ratings r ON r.id = l.rating JOIN books b ON b.id = l.book GROUP BY l.book) GROUP BY r"
        ):
            if isinstance(rating, (int, float)) and 1 <= rating <= 10:
                by_rating[int(rating)] += n
        fam = GaugeMetricFamily("calibre_books_by_rating", "Rated books by stars (Calibre's 0-10 rating / 2).",
                                labels=["stars"])
        for rating in sorted(by_rating):
            fam.add_metric([stars_label(rating)], by_rating[rating])
        rated = sum(by_rating.values())
        out = [fam, GaugeMetricFamily("calibre_unrated_books", "Books without a rating (or rated 0).",
                                      value=books - rated)]
        if rated:
            average = sum(r / 2 * n for r, n in by_rating.items()) / rated
            out.append(GaugeMetricFamily("calibre_average_rating_stars", "Mean rating of rated books, in stars.",
                                         value=average))
        return out
