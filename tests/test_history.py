"""History counters equal independent SQL over a cwa.db made with exporter.schema; time zones; monotonicity."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from exporter import schema
from exporter.aggregate.health import Health
from exporter.aggregate.history import HistorySource, extension_format, format_label
from exporter.db import reader_engine, writer_engine
from exporter.config import load

NOW = time.time()
TRIGGERS = ["auto -log", "auto -log (failed)", "manual -dir", "manual -all"]


def make_cwa_db(path) -> str:
    engine = writer_engine(str(path))
    schema.create_all(engine)
    engine.dispose()
    return str(path)


def insert(path, table: str, rows: list[dict]) -> None:
    conn = sqlite3.connect(path)
    for row in rows:
        cols = ", ".join(row)
        conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    conn.commit()
    conn.close()


def source(path, **overrides) -> HistorySource:
    config = load(overrides=overrides, environ={})
    return HistorySource(config, Health(), reader_engine(str(path)))


def counter(families, name: str, *labels) -> dict:
    out = {}
    for f in families:
        for s in f.samples:
            if s.name == name:
                key = tuple(s.labels[l] for l in labels)
                out[key if len(key) > 1 else key[0]] = s.value
    return out


def fill(path, n: int, start: int = 0) -> None:
    """``n`` rows in each history table; deterministic, varied values including CWA's edge cases."""
    imports, conversions, enforcements, fixes = [], [], [], []
    for i in range(start, start + n):
        ts = f"2024-0{1 + i % 9}-{10 + i % 18} {i % 24:02d}:{i % 60:02d}:00"
        name = ["Dune.epub", "Report.PDF", "Stem without extension", "odd.weird", "Manga.cbz"][i % 5]
        row = {"timestamp": ts, "filename": name, "original_backed_up": "True"}
        if i % 3 == 0:
            row |= {"source": ["Web Upload", "Ingest Folder"][i % 2], "method": "Calibredb Add"}
        imports.append(row)
        conversions.append({"timestamp": ts, "filename": "x", "original_format": ["mobi", "azw3", "epub"][i % 3],
                            "original_backed_up": "True", "end_format": ["epub", "kepub", ""][i % 3 if i % 7 else 2]})
        book = i % 13 if i % 2 else i % 5
        enforcements.append({"timestamp": ts, "book_id": book, "book_title": f"Book {book}", "author": "A",
                             "file_path": "/x", "trigger_type": TRIGGERS[i % 4]})
        fixes.append({"timestamp": ts, "filename": "f", "manually_triggered": ["1", "0", "True", "False"][i % 4],
                      "num_of_fixes_applied": str(i % 4), "original_backed_up": "False", "file_path": "/f"})
    insert(path, "cwa_import", imports)
    insert(path, "cwa_conversions", conversions)
    insert(path, "cwa_enforcement", enforcements)
    insert(path, "epub_fixes", fixes)


def expected(path) -> dict:
    """Independent SQL over the whole tables (valid while no rows were deleted)."""
    c = sqlite3.connect(path)
    q = lambda sql: c.execute(sql).fetchall()  # noqa: E731
    fmt = ("CASE WHEN lower(filename) LIKE '%.epub' THEN 'EPUB' WHEN lower(filename) LIKE '%.pdf' THEN 'PDF' "
           "WHEN lower(filename) LIKE '%.cbz' THEN 'CBZ' ELSE 'unknown' END")
    out = {
        "imports": {(s, m, f): n for s, m, f, n in q(
            f"SELECT COALESCE(source, 'unknown'), COALESCE(method, 'ingest'), {fmt} AS f, COUNT(*) FROM cwa_import "
            "GROUP BY 1, 2, 3")},
        "conversions": {(a, b): n for a, b, n in q(
            "SELECT UPPER(original_format), CASE WHEN end_format = '' THEN 'unknown' ELSE UPPER(end_format) END, "
            "COUNT(*) FROM cwa_conversions GROUP BY 1, 2")},
        "enforcements": dict(q("SELECT trigger_type, COUNT(*) FROM cwa_enforcement GROUP BY 1")),
        "fixes": dict(q("SELECT CASE WHEN manually_triggered IN ('1', 'True') THEN 'manual' ELSE 'auto' END, COUNT(*) "
                        "FROM epub_fixes GROUP BY 1")),
        "fixes_applied": dict(q("SELECT CASE WHEN manually_triggered IN ('1', 'True') THEN 'manual' ELSE 'auto' END, "
                                "SUM(CAST(num_of_fixes_applied AS INTEGER)) FROM epub_fixes GROUP BY 1")),
        # The seed's "top enforced books" query.
        "top": q("SELECT book_id, book_title, COUNT(*) AS enforcement_count, MAX(timestamp) AS last_enforced "
                 "FROM cwa_enforcement GROUP BY book_id ORDER BY enforcement_count DESC, last_enforced DESC, book_id "
                 "LIMIT 10"),
    }
    c.close()
    return out


def assert_matches(fams, exp, zone):
    assert counter(fams, "activity_imports_total", "source", "method", "format") == exp["imports"]
    assert counter(fams, "activity_conversions_total", "from_format", "to_format") == exp["conversions"]
    assert counter(fams, "activity_enforcements_total", "trigger") == exp["enforcements"]
    assert counter(fams, "activity_epub_fixes_total", "trigger") == exp["fixes"]
    assert counter(fams, "activity_epub_fixes_applied_total", "trigger") == exp["fixes_applied"]
    top = counter(fams, "activity_top_enforced_books", "book_id", "title")
    assert top == {(str(b), t): n for b, t, n, _ in exp["top"]}
    last = counter(fams, "activity_top_enforced_book_last_timestamp_seconds", "book_id", "title")
    assert last == {(str(b), t): datetime.fromisoformat(ts).replace(tzinfo=zone).timestamp()
                    for b, t, _, ts in exp["top"]}


def test_counters_equal_independent_sql_incrementally_and_chunked(tmp_path):
    path = make_cwa_db(tmp_path / "cwa.db")
    src = source(path, chunk_size=100, history_timezone="UTC")
    fill(path, 250)
    assert src.refresh(NOW) == 4 * 250
    assert_matches(src.families(NOW), expected(path), timezone.utc)
    assert src.refresh(NOW) == 0
    fill(path, 37, start=250)
    assert src.refresh(NOW) == 4 * 37
    assert_matches(src.families(NOW), expected(path), timezone.utc)
    assert src.health.ingested_rows["cwa_import"] == 287
    # Edge values checked by hand too.
    imports = counter(src.families(NOW), "activity_imports_total", "source", "method", "format")
    assert {k[2] for k in imports} == {"EPUB", "PDF", "CBZ", "unknown"}
    assert ("unknown", "ingest", "unknown") in imports
    assert set(counter(src.families(NOW), "activity_enforcements_total", "trigger")) == set(TRIGGERS)


def test_history_timestamps_are_local_time_in_the_configured_zone(tmp_path):
    path = make_cwa_db(tmp_path / "cwa.db")
    insert(path, "cwa_enforcement", [{"timestamp": "2024-07-01 12:00:00", "book_id": 5, "book_title": "T",
                                      "author": "A", "file_path": "/x", "trigger_type": "auto -log"}])
    ny = source(path, history_timezone="America/New_York")
    ny.refresh(NOW)
    last = counter(ny.families(NOW), "activity_top_enforced_book_last_timestamp_seconds", "book_id", "title")
    assert last == {("5", "T"): datetime(2024, 7, 1, 16, 0, tzinfo=timezone.utc).timestamp()}  # EDT = UTC-4
    newest = counter(ny.families(NOW), "activity_history_last_timestamp_seconds", "table")
    assert newest == {"cwa_enforcement": datetime(2024, 7, 1, 16, 0, tzinfo=timezone.utc).timestamp()}


def test_local_means_the_machine_zone(tmp_path, monkeypatch):
    path = make_cwa_db(tmp_path / "cwa.db")
    insert(path, "cwa_enforcement", [{"timestamp": "2024-01-15 08:30:00", "book_id": 1, "book_title": "T",
                                      "author": "A", "file_path": "/x", "trigger_type": "manual -dir"}])
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        src = source(path, history_timezone="local")
        src.refresh(NOW)
        last = counter(src.families(NOW), "activity_top_enforced_book_last_timestamp_seconds", "book_id", "title")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert last == {("1", "T"): datetime(2024, 1, 15, 3, 0, tzinfo=timezone.utc).timestamp()}  # IST = UTC+5:30


def test_counters_never_go_down_when_rows_are_deleted(tmp_path):
    path = make_cwa_db(tmp_path / "cwa.db")
    src = source(path, history_timezone="UTC")
    fill(path, 120)
    src.refresh(NOW)
    before = expected(path)
    conn = sqlite3.connect(path)
    for table in ("cwa_import", "cwa_conversions", "cwa_enforcement", "epub_fixes"):
        conn.execute(f"DELETE FROM {table} WHERE id % 2 = 0 OR id > 100")  # prune, including the newest rows
    conn.commit()
    conn.close()
    assert src.refresh(NOW) == 0
    assert_matches(src.families(NOW), before, timezone.utc)
    # New rows after the prune are counted on top (AUTOINCREMENT never reuses ids).
    fill(path, 10, start=120)
    assert src.refresh(NOW) == 40
    imports = counter(src.families(NOW), "activity_imports_total", "source", "method", "format")
    assert sum(imports.values()) == 130


def test_emptied_table_with_reused_ids_is_followed_down(tmp_path):
    """A replaced database restarts ids: the cursor follows MAX(id) down; nothing is counted twice."""
    path = make_cwa_db(tmp_path / "cwa.db")
    src = source(path, history_timezone="UTC")
    fill(path, 50)
    src.refresh(NOW)
    os.remove(path)
    make_cwa_db(path)
    fill(path, 5)
    src.engine.dispose()
    src.refresh(NOW)  # sees MAX(id) = 5 < cursor 50: cursor := 5, the 5 rows already there are not counted
    fill(path, 3, start=5)
    assert src.refresh(NOW) == 12
    imports = counter(src.families(NOW), "activity_imports_total", "source", "method", "format")
    assert sum(imports.values()) == 53


def test_state_round_trip_resumes_without_recounting(tmp_path):
    path = make_cwa_db(tmp_path / "cwa.db")
    src = source(path, history_timezone="UTC")
    fill(path, 60)
    src.refresh(NOW)
    saved = json.loads(json.dumps(src.state()))
    again = source(path, history_timezone="UTC")
    again.load_state(saved)
    assert again.refresh(NOW) == 0
    fill(path, 20, start=60)
    again.refresh(NOW)
    assert_matches(again.families(NOW), expected(path), timezone.utc)


def test_old_cwa_database_without_tables_or_columns(tmp_path):
    """Old CWA: no epub_fixes, no end_format, none of our source/method columns. Read, not an error."""
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE cwa_import (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL,
            filename TEXT NOT NULL, original_backed_up TEXT NOT NULL);
        CREATE TABLE cwa_conversions (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL,
            filename TEXT NOT NULL, original_format TEXT NOT NULL, original_backed_up TEXT NOT NULL);
        INSERT INTO cwa_import (timestamp, filename, original_backed_up) VALUES ('2024-01-01 10:00:00', 'a.epub', 'x');
        INSERT INTO cwa_conversions (timestamp, filename, original_format, original_backed_up)
            VALUES ('2024-01-01 10:00:00', 'a', 'mobi', 'x');
    """)
    conn.commit()
    conn.close()
    src = source(path)
    assert src.refresh(NOW) == 2
    fams = src.families(NOW)
    assert counter(fams, "activity_imports_total", "source", "method", "format") == {("unknown", "ingest", "EPUB"): 1}
    assert counter(fams, "activity_conversions_total", "from_format", "to_format") == {("MOBI", "unknown"): 1}
    assert counter(fams, "activity_enforcements_total", "trigger") == {}


def test_bad_timestamps_are_counted_and_noted(tmp_path):
    path = make_cwa_db(tmp_path / "cwa.db")
    insert(path, "cwa_import", [{"timestamp": "yesterday", "filename": "a.epub", "original_backed_up": "x"}])
    src = source(path)
    src.refresh(NOW)
    assert counter(src.families(NOW), "activity_imports_total", "source", "method", "format") == {
        ("unknown", "ingest", "EPUB"): 1}
    assert src.health.malformed_rows[("cwa_import", "bad_timestamp")] == 1


def test_labels_from_rows_are_bounded(tmp_path):
    path = make_cwa_db(tmp_path / "cwa.db")
    insert(path, "cwa_import", [{"timestamp": "2024-01-01 00:00:00", "filename": f"x.{i}zz", "source": f"s{i}",
                                 "method": f"m{i}", "original_backed_up": "x"} for i in range(500)])
    insert(path, "cwa_enforcement", [{"timestamp": "2024-01-01 00:00:00", "book_id": i, "book_title": f"t{i}",
                                      "author": "a", "file_path": "/", "trigger_type": f"trig {i}"} for i in range(500)])
    src = source(path, label_cap=5)
    src.refresh(NOW)
    fams = src.families(NOW)
    imports = counter(fams, "activity_imports_total", "source", "method", "format")
    assert len({k[0] for k in imports}) == 6 and len({k[1] for k in imports}) == 6
    assert {k[2] for k in imports} == {"unknown"}
    assert len(counter(fams, "activity_enforcements_total", "trigger")) == 6
    assert len(counter(fams, "activity_top_enforced_books", "book_id", "title")) == 10


def test_format_labels():
    assert format_label("epub") == "EPUB" and format_label(".Kepub") == "KEPUB"
    assert format_label("") == "unknown" and format_label("<script>") == "other"
    assert extension_format("Dune") == "unknown" and extension_format("a.b.PDF") == "PDF"


def test_reads_with_a_read_only_engine(tmp_path):
    path = make_cwa_db(tmp_path / "cwa.db")
    fill(path, 3)
    src = source(path)
    src.refresh(NOW)
    with pytest.raises(Exception, match="readonly"):
        with src.engine.begin() as conn:
            conn.execute(text("DELETE FROM cwa_import"))


@pytest.mark.parametrize("zone", ["America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"])
def test_local_time_matches_zoneinfo_across_dst(zone):
    """The per-hour cache gives exactly what zoneinfo gives, also in DST gaps, folds and 30-minute shifts."""
    from datetime import timedelta

    from exporter.aggregate.history import LocalTime

    convert = LocalTime(zone)
    tz = ZoneInfo(zone)
    start = datetime(2024, 1, 1)
    for minutes in range(0, 366 * 24 * 60, 13):
        naive = start + timedelta(minutes=minutes, seconds=minutes % 60)
        assert convert(naive.strftime("%Y-%m-%d %H:%M:%S")) == naive.replace(tzinfo=tz).timestamp(), naive
    assert convert("2024-01-01 10:61:00") is None and convert("not a time") is None


def test_postgresql_activity_store(pg_url):
    """The same reads work on the PostgreSQL store (quoted identifiers, LIMIT binds, reflection)."""
    from sqlalchemy import create_engine

    engine = create_engine(pg_url)
    schema.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE cwa_import, cwa_conversions, cwa_enforcement, epub_fixes RESTART IDENTITY"))
        conn.execute(schema.imports.insert(), [
            {"timestamp": "2024-01-01 10:00:00", "filename": f"b{i}.{'epub' if i % 2 else 'pdf'}",
             "original_backed_up": "x", "source": "Web Upload" if i % 3 == 0 else None} for i in range(150)])
        conn.execute(schema.enforcement.insert(), [
            {"timestamp": "2024-01-01 10:00:00", "book_id": i % 4, "book_title": f"T{i % 4}", "author": "a",
             "file_path": "/", "trigger_type": "manual -all"} for i in range(30)])
    src = HistorySource(load(overrides={"activity_db": pg_url, "chunk_size": 100}, environ={}), Health(),
                        reader_engine(pg_url))
    assert src.refresh(NOW) == 180
    with engine.connect() as conn:
        expected_imports = {(s, "ingest", f): n for s, f, n in conn.execute(text(
            "SELECT COALESCE(source, 'unknown'), CASE WHEN filename LIKE '%.epub' THEN 'EPUB' ELSE 'PDF' END, "
            "COUNT(*) FROM cwa_import GROUP BY 1, 2"))}
        expected_top = {(str(b), t): n for b, t, n in conn.execute(text(
            "SELECT book_id, book_title, COUNT(*) FROM cwa_enforcement GROUP BY 1, 2"))}
    fams = src.families(NOW)
    assert counter(fams, "activity_imports_total", "source", "method", "format") == expected_imports
    assert counter(fams, "activity_top_enforced_books", "book_id", "title") == expected_top
    assert src.refresh(NOW) == 0
    src.engine.dispose()
    engine.dispose()
